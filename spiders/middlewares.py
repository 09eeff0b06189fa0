"""Downloader middleware that refuses requests to loopback, private and other non-public addresses.

Why: seed URLs and links come from the open web; a page must not steer the crawler into the
operator's own network (SSRF). The check resolves the host once per crawl and looks at every
address it maps to. It is deliberately simple for now (a later issue pins the resolved address
for the connection, closing the DNS-rebinding gap). The demo site, tests and benches, which live on
127.0.0.1, set ``allow_loopback`` (only 127.0.0.0/8 and ::1) or ``allow_private_addresses`` (any
non-public address).

Redirects are re-checked: Scrapy's RedirectMiddleware (priority 600) turns a 3xx into a new
request that goes through the scheduler and through this middleware (priority 40) again, so a
public page redirecting to 10.0.0.1 is refused before any connection to 10.0.0.1 is attempted.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from typing import TYPE_CHECKING, Self

from scrapy.exceptions import IgnoreRequest
from scrapy.utils.httpobj import urlparse_cached

if TYPE_CHECKING:
    from scrapy import Request
    from scrapy.crawler import Crawler
    from scrapy.statscollectors import StatsCollector

ALLOW_SETTING = "LORA_FACTORY_ALLOW_PRIVATE_ADDRESSES"
ALLOW_LOOPBACK_SETTING = "LORA_FACTORY_ALLOW_LOOPBACK"
RESOLVE_TIMEOUT_S = 10.0


class PrivateAddressRefused(IgnoreRequest):
    """The request's host resolves to an address the crawl may not reach."""


def _ip(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        return ip.ipv4_mapped
    return ip


def is_loopback(address: str) -> bool:
    return _ip(address).is_loopback


def is_public(address: str) -> bool:
    """True for globally routable unicast addresses (IPv4-mapped IPv6 judged as IPv4)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


class PrivateAddressMiddleware:
    def __init__(self, allow: bool, stats: StatsCollector, allow_loopback: bool = False) -> None:
        self.allow = allow
        self.allow_loopback = allow_loopback
        self.stats = stats
        self._resolved: dict[str, list[str]] = {}

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        settings = crawler.settings
        return cls(
            settings.getbool(ALLOW_SETTING), crawler.stats, settings.getbool(ALLOW_LOOPBACK_SETTING)
        )

    async def process_request(self, request: Request) -> None:
        if self.allow:
            return
        host = urlparse_cached(request).hostname
        if not host:
            return
        blocked = [
            a
            for a in await self._addresses(host)
            if not is_public(a) and not (self.allow_loopback and is_loopback(a))
        ]
        if blocked:
            self.stats.inc_value("lora_factory/refused_private_address")
            raise PrivateAddressRefused(
                f"{host} is a private/loopback address ({blocked[0]}); "
                "set crawl.allow_private_addresses=true (or allow_loopback) to crawl it"
            )
        return

    async def _addresses(self, host: str) -> list[str]:
        try:
            ipaddress.ip_address(host.split("%", 1)[0])
            return [host]
        except ValueError:
            pass
        if host not in self._resolved:
            loop = asyncio.get_running_loop()
            try:
                infos = await asyncio.wait_for(
                    loop.getaddrinfo(host, None, type=socket.SOCK_STREAM), RESOLVE_TIMEOUT_S
                )
                self._resolved[host] = sorted({str(info[4][0]) for info in infos})
            except (TimeoutError, OSError):
                # Unresolvable here: the download itself will fail and report the DNS error.
                self._resolved[host] = []
        return self._resolved[host]
