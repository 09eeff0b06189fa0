"""The crawl's name resolver: each host is looked up once, judged, and pinned for the crawl.

Why a resolver and not only a check before the download: a check that resolves a name and a
download that resolves it again can get two different answers (DNS rebinding: a public address
for the check, 127.0.0.1 a second later for the connection). Installed as Scrapy's
``TWISTED_DNS_RESOLVER``, this class is the reactor's name resolver, so every connection the
crawler makes (pages, images, robots.txt, redirects) goes to an address it judged: Twisted's
``HostnameEndpoint`` asks it for the addresses and connects to those, while the URL, and so the
Host header and the TLS server name, keep the host name. ``AddressGuardMiddleware`` asks the
same resolver for its verdict before a request is downloaded, to record why it was refused.

Fail closed: a lookup that fails or times out refuses the host (reason ``dns_error``); a host
with any address the policy refuses is refused as a whole (``private_address``), and the
resolver reports no address for it, so not even a request that skipped the middleware could
connect. Verdicts are kept for the crawl's lifetime (a crawl is bounded; TTLs are not honoured).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Self

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IHostnameResolver, IHostResolution, IResolutionReceiver
from zope.interface import implementer

from .guard import AddressPolicy, parse_ip

if TYPE_CHECKING:
    from scrapy.crawler import Crawler

ALLOW_SETTING = "LORA_FACTORY_ALLOW_PRIVATE_ADDRESSES"
ALLOW_LOOPBACK_SETTING = "LORA_FACTORY_ALLOW_LOOPBACK"
RESOLVE_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Verdict:
    """A host's addresses if the crawl may connect to them; else the reason it may not."""

    host: str
    addresses: tuple[str, ...] = field(default_factory=tuple)
    reason: str | None = None  # "private_address" | "dns_error"
    detail: str | None = None


def host_key(host: str) -> str:
    return host.strip("[]").rstrip(".").lower()


@implementer(IHostResolution)
class _Resolution:
    def __init__(self, name: str) -> None:
        self.name = name

    def cancel(self) -> None:
        """A lookup cannot be cancelled; its verdict is kept for the next request."""


@implementer(IHostnameResolver)
class GuardedResolver:
    """``IHostnameResolver`` that reports only judged addresses, looked up once per host."""

    def __init__(self, reactor: Any, policy: AddressPolicy, timeout_s: float = RESOLVE_TIMEOUT_S):
        self.reactor = reactor
        self.policy = policy
        self.timeout_s = timeout_s
        self._verdicts: dict[str, asyncio.Future[Verdict]] = {}
        self._deliveries: set[asyncio.Task[None]] = set()  # asyncio keeps only weak references
        self.lookups = 0  # names looked up (a test counts them: one per host)

    @classmethod
    def from_crawler(cls, crawler: Crawler, reactor: Any) -> Self:
        settings = crawler.settings
        policy = AddressPolicy(settings.getbool(ALLOW_SETTING), settings.getbool(ALLOW_LOOPBACK_SETTING))
        return cls(reactor, policy, settings.getfloat("DNS_TIMEOUT", RESOLVE_TIMEOUT_S))

    def install_on_reactor(self) -> None:
        self.reactor.installNameResolver(self)

    async def verdict(self, host: str) -> Verdict:
        """The host's verdict: looked up on the first call, the same answer ever after."""
        key = host_key(host)
        future = self._verdicts.get(key)
        if future is None:
            future = self._verdicts[key] = asyncio.ensure_future(self._judge(key))
        return await asyncio.shield(future)

    async def _judge(self, host: str) -> Verdict:
        try:
            addresses: Sequence[str] = [str(parse_ip(host))]
        except ValueError:
            looked_up = await self._lookup(host)
            if isinstance(looked_up, Verdict):
                return looked_up
            addresses = looked_up
        for address in addresses:
            if (why := self.policy.refusal(address)) is not None:
                return Verdict(host, (), "private_address", f"{host} resolves to {address}, {why}; "
                               "refused before connecting (set crawl.allow_private_addresses=true "
                               "or allow_loopback to crawl it)")
        return Verdict(host, tuple(addresses))

    async def _lookup(self, host: str) -> list[str] | Verdict:
        self.lookups += 1
        loop = asyncio.get_running_loop()
        try:
            infos = await asyncio.wait_for(
                loop.getaddrinfo(host, None, type=socket.SOCK_STREAM), self.timeout_s
            )
        except TimeoutError:
            why = f"timed out after {self.timeout_s:g} s"
        except (OSError, UnicodeError) as exc:
            why = f"failed: {getattr(exc, 'strerror', None) or exc}"
        else:
            if addresses := sorted({str(info[4][0]) for info in infos}):
                return addresses
            why = "returned no address"
        return Verdict(host, (), "dns_error", f"the DNS lookup of {host} {why}; refused (the crawler "
                       "never connects to an address it could not check)")

    def resolveHostName(  # noqa: N802 (Twisted's interface)
        self,
        resolutionReceiver: IResolutionReceiver,  # noqa: N803
        hostName: str,  # noqa: N803
        portNumber: int = 0,  # noqa: N803
        addressTypes: Sequence[type] | None = None,  # noqa: N803
        transportSemantics: str = "TCP",  # noqa: N803
    ) -> IHostResolution:
        resolution = _Resolution(hostName)
        resolutionReceiver.resolutionBegan(resolution)

        async def deliver() -> None:
            try:
                verdict = await self.verdict(hostName)
                for address in verdict.addresses:
                    kind = IPv4Address if parse_ip(address).version == 4 else IPv6Address
                    if addressTypes is None or kind in addressTypes:
                        resolutionReceiver.addressResolved(kind("TCP", address, portNumber))
            finally:
                resolutionReceiver.resolutionComplete()

        task = asyncio.ensure_future(deliver())
        self._deliveries.add(task)
        task.add_done_callback(self._deliveries.discard)
        return resolution
