"""Fetching one listed image over aiohttp, with every check the Scrapy crawl applies to it.

Why not Scrapy for a url list: with no page to parse, Scrapy's per-request machinery (the
middleware chains, signals, several asyncio tasks per response) was most of the crawl's CPU
(~2.6 ms per image, README "Crawl"); a keep-alive aiohttp session does the same fetch for a
fraction of that. The checks are the crawl's own, in the crawl's order:

- the address guard (``spiders.guard`` through ``spiders.resolver.GuardedResolver``): http(s)
  only, every host judged before any connection, its addresses pinned (``PinnedResolver`` gives
  aiohttp only the judged addresses), every redirect hop judged again;
- robots.txt (Protego, the parser Scrapy uses): fetched once per origin through the same guard,
  unreachable or not 200 means no rules, as in Scrapy;
- at the headers: Content-Type and ``X-Robots-Tag: noai/noimageai`` (``spiders.optout``), and a
  declared length over ``max_image_bytes``; the body is read up to that bound and no further;
- politeness: at most ``concurrent_requests_per_domain`` requests per host at a time and
  ``download_delay_s`` between their starts (``HostGate``).

A fetch that must not go on raises ``Refused`` with the reason token the Scrapy path records.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin, urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from protego import Protego

from lora_factory.config import CrawlConfig

from .guard import scheme_refusal, shown_url
from .images import declared_type, type_is_acceptable
from .optout import bot_token, image_opt_out
from .resolver import GuardedResolver, Verdict, host_key

REDIRECTS = frozenset({301, 302, 303, 307, 308})
RETRY_STATUSES = frozenset({500, 502, 503, 504, 522, 524, 408, 429})  # Scrapy's RETRY_HTTP_CODES
ROBOTS_MAX_BYTES = 512 * 1024
CHUNK = 64 * 1024


class Refused(Exception):
    """The image is not fetched (or not kept): ``reason`` is the crawl's token."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


@dataclass
class Counts:
    """This session's request counts, under the keys ``CrawlRecord`` reads from Scrapy's stats."""

    values: dict[str, Any] = field(default_factory=lambda: {
        "downloader/request_count": 0, "downloader/response_bytes": 0, "robotstxt/forbidden": 0,
    })

    def inc(self, key: str, by: int = 1) -> None:
        self.values[key] = self.values.get(key, 0) + by


class Guard:
    """The crawl's address guard for aiohttp: verdicts from ``GuardedResolver``, cached once known."""

    def __init__(self, config: CrawlConfig) -> None:
        from .guard import AddressPolicy

        policy = AddressPolicy(config.allow_private_addresses, config.allow_loopback)
        self.resolver = GuardedResolver(None, policy)
        self._known: dict[str, Verdict] = {}

    async def verdict(self, host: str) -> Verdict:
        key = host_key(host)
        if (known := self._known.get(key)) is None:
            known = self._known[key] = await self.resolver.verdict(host)
        return known

    async def check(self, url: str) -> str:
        """The URL's host if it may be fetched; raises ``Refused`` (scheme, DNS, address)."""
        if (why := scheme_refusal(url)) is not None:
            raise Refused("unsupported_scheme", why)
        host = urlsplit(url).hostname
        if not host:
            raise Refused("unsupported_scheme", f"{shown_url(url)} names no host")
        verdict = await self.verdict(host)
        if verdict.reason is not None:
            raise Refused(verdict.reason, verdict.detail or verdict.reason)
        return host


class PinnedResolver(AbstractResolver):
    """aiohttp's resolver: only the addresses the guard judged, looked up once per host."""

    def __init__(self, guard: Guard) -> None:
        self.guard = guard

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        verdict = await self.guard.verdict(host)
        if not verdict.addresses:  # refused hosts never reach here; fail closed if one did
            raise OSError(f"{host} was refused by the address guard: {verdict.detail}")
        out: list[ResolveResult] = []
        for address in verdict.addresses:
            fam = socket.AF_INET6 if ":" in address else socket.AF_INET
            if family in (socket.AF_UNSPEC, fam):
                out.append({"hostname": host, "host": address, "port": port, "family": fam,
                            "proto": 0, "flags": socket.AI_NUMERICHOST})
        if not out:
            raise OSError(f"{host} has no judged address of family {family!r}")
        return out

    async def close(self) -> None:
        """Nothing to release: verdicts live as long as the crawl."""


class HostGate:
    """Per-host politeness: a bounded number of requests at a time, a delay between starts."""

    def __init__(self, per_host: int, delay_s: float) -> None:
        self.per_host, self.delay_s = per_host, delay_s
        self._slots: dict[str, asyncio.Semaphore] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._last: dict[str, float] = {}

    @asynccontextmanager
    async def slot(self, host: str) -> AsyncIterator[None]:
        sem = self._slots.setdefault(host, asyncio.Semaphore(self.per_host))
        async with sem:
            if self.delay_s > 0:
                async with self._locks.setdefault(host, asyncio.Lock()):
                    wait = self._last.get(host, float("-inf")) + self.delay_s - time.monotonic()
                    if wait > 0:
                        await asyncio.sleep(wait)
                    self._last[host] = time.monotonic()
            yield


async def read_bounded(resp: aiohttp.ClientResponse, limit: int, what: str) -> bytes:
    """The body, or ``Refused("too_large")`` as soon as it grows beyond ``limit`` bytes."""
    declared = resp.content_length
    if declared is not None and declared > limit:
        raise Refused("too_large", f"{what} declares {declared} bytes > {limit} (max_image_bytes)")
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_chunked(CHUNK):
        size += len(chunk)
        if size > limit:
            raise Refused("too_large", f"download cancelled: the body grew beyond {limit} bytes (max_image_bytes)")
        chunks.append(chunk)
    return b"".join(chunks)


def transport_reason(exc: BaseException) -> tuple[str, str]:
    """The reason token of a failed connection or read (as ``spiders.failures`` spells them)."""
    detail = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, aiohttp.ClientConnectorError) and isinstance(exc.os_error, ConnectionRefusedError):
        return "connection_refused", detail
    if isinstance(exc, asyncio.TimeoutError | TimeoutError):
        return "timeout", detail if detail != type(exc).__name__ else "the download timed out"
    return "download_error", f"{type(exc).__name__}: {detail}"


Check = Callable[[aiohttp.ClientResponse], None]


class Fetcher:
    """One crawl's HTTP side: the session, the guard, robots.txt rules and the host gate."""

    def __init__(self, config: CrawlConfig, counts: Counts) -> None:
        self.config, self.counts = config, counts
        self.guard = Guard(config)
        self.gate = HostGate(config.concurrent_requests_per_domain, config.download_delay_s)
        self.bot = bot_token(config.user_agent)
        self._robots: dict[str, asyncio.Future[Protego | None]] = {}
        self.session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Fetcher:
        connector = aiohttp.TCPConnector(
            limit=self.config.concurrent_requests, limit_per_host=self.config.concurrent_requests_per_domain,
            resolver=PinnedResolver(self.guard),
        )
        self.session = aiohttp.ClientSession(
            connector=connector, headers={"User-Agent": self.config.user_agent},
            timeout=aiohttp.ClientTimeout(total=self.config.download_timeout_s), trust_env=False,
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.session is not None:
            await self.session.close()

    async def image(self, url: str) -> tuple[bytes, str]:
        """The image's body and Content-Type; raises ``Refused`` with the crawl's reason."""
        return await self._get(url, self._check_image, self.config.max_image_bytes, robots=True)

    def _check_image(self, resp: aiohttp.ClientResponse) -> None:
        content_type = resp.headers.get("Content-Type", "")
        if not type_is_acceptable(content_type):
            raise Refused("not_image", f"Content-Type {declared_type(content_type)}")
        if self.config.honour_noai and (why := image_opt_out(resp.headers.getall("X-Robots-Tag", []), self.bot)):
            raise Refused("noai", why)

    async def _get(self, url: str, check: Check | None, limit: int, robots: bool) -> tuple[bytes, str]:
        """GET with redirects followed by hand, each hop guarded (and robots-checked)."""
        first = url
        for _hop in range(self.config.max_redirects + 1):
            try:
                host = await self.guard.check(url)
            except Refused as refused:
                if url != first and refused.reason == "unsupported_scheme":
                    refused.detail = f"redirect to {shown_url(url)}: {refused.detail}"
                raise
            if robots and self.config.obey_robots and not await self._robots_allow(url):
                self.counts.inc("robotstxt/forbidden")
                raise Refused("robots_txt", "Forbidden by robots.txt")
            location, body, ctype = await self._attempts(url, host, check, limit)
            if location is None:
                return body, ctype
            url = urljoin(url, location)
        raise Refused("redirect_loop", f"max redirections reached ({self.config.max_redirects})")

    async def _attempts(self, url: str, host: str, check: Check | None, limit: int) -> tuple[str | None, bytes, str]:
        """One hop, retried once on a connection failure or a retryable status (as Scrapy)."""
        for attempt in (0, 1):
            try:
                return await self._once(url, host, check, limit)
            except Refused as refused:
                if attempt or not refused.reason.startswith("retry:"):
                    raise Refused(refused.reason.removeprefix("retry:"), refused.detail) from None
        raise AssertionError("unreachable")

    async def _once(self, url: str, host: str, check: Check | None, limit: int) -> tuple[str | None, bytes, str]:
        assert self.session is not None
        async with self.gate.slot(host):
            self.counts.inc("downloader/request_count")
            try:
                async with self.session.get(url, allow_redirects=False) as resp:
                    if resp.status in REDIRECTS and "Location" in resp.headers:
                        return resp.headers["Location"], b"", ""
                    if not 200 <= resp.status < 300:
                        retry = "retry:" if resp.status in RETRY_STATUSES else ""
                        raise Refused(f"{retry}http_{resp.status}", f"HTTP {resp.status}")
                    if check is not None:
                        check(resp)
                    body = await read_bounded(resp, limit, shown_url(url))
                    self.counts.inc("downloader/response_bytes", len(body))
                    return None, body, resp.headers.get("Content-Type", "")
            except (aiohttp.ClientError, TimeoutError) as exc:
                reason, detail = transport_reason(exc)
                raise Refused(f"retry:{reason}", detail) from None

    async def _robots_allow(self, url: str) -> bool:
        parts = urlsplit(url)
        origin = f"{parts.scheme}://{parts.netloc}"
        future = self._robots.get(origin)
        if future is None:
            future = self._robots[origin] = asyncio.ensure_future(self._robots_rules(origin))
        rules = await asyncio.shield(future)
        return rules is None or rules.can_fetch(url, self.config.user_agent)

    async def _robots_rules(self, origin: str) -> Protego | None:
        """The origin's robots.txt rules; None (everything allowed) if it has none we can read."""
        try:
            body, _ = await self._get(f"{origin}/robots.txt", None, ROBOTS_MAX_BYTES, robots=False)
        except Refused:
            return None
        return Protego.parse(body.decode("utf-8", errors="ignore"))
