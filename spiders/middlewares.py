"""Downloader middleware: the address guard. Refuses, before any connection is attempted, every
request that is not http(s) and every host that resolves to a loopback, private or otherwise
non-public address, or whose DNS lookup fails (``spiders.guard``, ``spiders.resolver``).

The refusal is an ``IgnoreRequest`` carrying a reason token, so the spider's errbacks record the
page or image with it (``private_address``, ``dns_error``, ``unsupported_scheme``). The demo
site, tests and benches, which live on 127.0.0.1, set ``allow_loopback`` (only 127.0.0.0/8 and
::1) or ``allow_private_addresses`` (any address; the scheme and DNS checks still apply).

Redirects are re-checked: Scrapy's RedirectMiddleware (priority 600) turns a 3xx into a new
request that goes through the scheduler and through this middleware (priority 40) again, so a
public page redirecting to 10.0.0.1 is refused before any connection to 10.0.0.1 is attempted.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Self

from scrapy.exceptions import IgnoreRequest
from scrapy.utils.httpobj import urlparse_cached

from .guard import scheme_refusal
from .resolver import GuardedResolver

if TYPE_CHECKING:
    from scrapy import Request
    from scrapy.crawler import Crawler
    from scrapy.statscollectors import StatsCollector


class RequestRefused(IgnoreRequest):
    """The guard refused the request before any connection; ``reason`` is its token."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


class AddressGuardMiddleware:
    def __init__(self, resolver: GuardedResolver, stats: StatsCollector) -> None:
        self.resolver = resolver
        self.stats = stats

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        from twisted.internet import reactor

        resolver = getattr(reactor, "nameResolver", None)
        if not isinstance(resolver, GuardedResolver):
            raise RuntimeError(
                "the address guard needs TWISTED_DNS_RESOLVER = spiders.resolver.GuardedResolver "
                f"(the reactor resolves with {type(resolver).__name__})"
            )
        return cls(resolver, crawler.stats)

    def _refuse(self, reason: str, detail: str) -> RequestRefused:
        self.stats.inc_value(f"lora_factory/refused/{reason}")
        return RequestRefused(reason, detail)

    async def process_request(self, request: Request) -> None:
        if (why := scheme_refusal(request.url)) is not None:
            raise self._refuse("unsupported_scheme", why)
        host = urlparse_cached(request).hostname
        if not host:
            raise self._refuse("unsupported_scheme", f"{request.url[:200]} names no host")
        verdict = await self.resolver.verdict(host)
        if verdict.reason is not None:
            raise self._refuse(verdict.reason, verdict.detail or verdict.reason)
