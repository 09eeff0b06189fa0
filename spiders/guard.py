"""What the crawler may fetch: http(s) only, and only hosts whose every address is public.

Why: seed URLs, links and image URLs come from the open web; a page must not steer the crawler
into the operator's own machine or network (SSRF): ``file://`` would read local files, and a
name or an IPv6 form that resolves to a loopback, private or link-local address (the cloud
metadata service at 169.254.169.254) would reach internal services.

Pure functions; ``spiders.resolver`` applies them to every host before any connection.
An address is public when it is globally routable unicast. IPv6 forms that carry an IPv4
address are judged by that address (IPv4-mapped ``::ffff:a.b.c.d``, 6to4 ``2002::/16``, NAT64
``64:ff9b::/96``); IPv4-compatible ``::a.b.c.d`` (deprecated), the local-use NAT64 prefix
``64:ff9b:1::/48`` and site-local ``fec0::/10`` are never public.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from urllib.parse import urlsplit

FETCH_SCHEMES = ("http", "https")
# Links that name nothing a crawler could fetch: not requests, so neither made nor recorded.
NOT_RESOURCES = ("mailto", "tel", "sms", "javascript", "about")
SHOWN_URL_CHARS = 200  # a data: URL can be megabytes; records keep its start

_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")
_SITE_LOCAL = ipaddress.ip_network("fec0::/10")
_LOOPBACK_V4 = ipaddress.ip_network("127.0.0.0/8")

IP = ipaddress.IPv4Address | ipaddress.IPv6Address


def scheme_of(url: str) -> str:
    return urlsplit(url).scheme.lower()


def scheme_refusal(url: str) -> str | None:
    """Why ``url`` is never fetched (its scheme is not http or https), or None."""
    scheme = scheme_of(url)
    if scheme in FETCH_SCHEMES:
        return None
    what = f"{scheme}: URLs" if scheme else "URLs without a scheme"
    return f"{what} are never fetched; the crawler requests http(s) only"


def is_resource_link(url: str) -> bool:
    """False for links that name nothing to fetch (``mailto:``, ``javascript:`` ...)."""
    return scheme_of(url) not in NOT_RESOURCES


def shown_url(url: str) -> str:
    """``url`` as recorded: cut to ``SHOWN_URL_CHARS`` (inline ``data:`` URLs can be huge)."""
    return url if len(url) <= SHOWN_URL_CHARS else url[: SHOWN_URL_CHARS - 1] + "\u2026"


def parse_ip(address: str) -> IP:
    """An IP address without its IPv6 zone (``fe80::1%eth0``)."""
    return ipaddress.ip_address(address.split("%", 1)[0])


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> tuple[str, ipaddress.IPv4Address] | None:
    if ip.ipv4_mapped is not None:
        return "IPv4-mapped", ip.ipv4_mapped
    if ip.sixtofour is not None:
        return "6to4", ip.sixtofour
    if ip in _NAT64:
        return "NAT64", ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def why_not_public(address: str) -> str | None:
    """None for a public address; else what it is ("loopback", "6to4 of 169.254.169.254 ...")."""
    ip = parse_ip(address)
    if isinstance(ip, ipaddress.IPv6Address) and not (ip.is_loopback or ip.is_unspecified):
        if ip in _IPV4_COMPATIBLE:
            return "an IPv4-compatible IPv6 address (deprecated, never public)"
        if ip in _NAT64_LOCAL:
            return "in the local-use NAT64 prefix 64:ff9b:1::/48"
        if ip in _SITE_LOCAL:
            return "a site-local IPv6 address (fec0::/10)"
        if (embedded := _embedded_ipv4(ip)) is not None:
            kind, v4 = embedded
            inner = why_not_public(str(v4))
            return f"the {kind} form of {v4}, {inner}" if inner else None
    for flag, what in (
        ("is_unspecified", "an unspecified"), ("is_loopback", "a loopback"),
        ("is_link_local", "a link-local"), ("is_multicast", "a multicast"), ("is_private", "a private"),
    ):
        if getattr(ip, flag):
            return f"{what} address"
    return None if ip.is_global else "not globally routable"


def is_public(address: str) -> bool:
    return why_not_public(address) is None


def is_loopback(address: str) -> bool:
    """127.0.0.0/8, ::1 and their IPv4-mapped form (the OS treats them as one)."""
    ip = parse_ip(address)
    if isinstance(ip, ipaddress.IPv6Address):
        return ip.is_loopback or (ip.ipv4_mapped is not None and ip.ipv4_mapped in _LOOPBACK_V4)
    return ip in _LOOPBACK_V4


@dataclass(frozen=True)
class AddressPolicy:
    """Which addresses the crawl may connect to: public ones, plus what the config allows."""

    allow_private: bool = False  # any address (a crawl of the operator's own network)
    allow_loopback: bool = False  # 127.0.0.0/8 and ::1 (the demo site, tests, benches)

    def refusal(self, address: str) -> str | None:
        """Why the crawl may not connect to ``address``, or None."""
        if self.allow_private:
            return None
        why = why_not_public(address)
        if why is None or (self.allow_loopback and is_loopback(address)):
            return None
        return why
