"""The address guard: which addresses are public, how names are resolved (once, fail closed,
pinned), and that a crawl connects to the address that was checked."""

from __future__ import annotations

import asyncio
import functools
import json
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.address import IPv4Address

from lora_factory.config import CrawlConfig
from spiders.crawl import REPO_ROOT
from spiders.guard import AddressPolicy, is_public, is_resource_link, scheme_refusal
from spiders.resolver import GuardedResolver
from spiders.sources.demo_site import generate_demo_site
from spiders.sources.loopback import QuietLog, serve_in_thread
from spiders.spec import CrawlSpec
from tests.crawl_rebind_child import FIRST, LATER, REBIND_HOST


@pytest.mark.parametrize(
    "address",
    [
        "::127.0.0.1", "::10.0.0.1",  # IPv4-compatible (deprecated)
        "::ffff:10.0.0.1", "::ffff:169.254.169.254",  # IPv4-mapped
        "2002:a9fe:a9fe::1", "2002:0a00:0001::1",  # 6to4 of 169.254.169.254 and 10.0.0.1
        "64:ff9b::a9fe:a9fe", "64:ff9b::7f00:1",  # NAT64 of 169.254.169.254 and 127.0.0.1
        "64:ff9b:1::a00:1",  # local-use NAT64 prefix
        "fec0::1",  # site-local
        "127.0.0.1", "10.1.2.3", "192.168.0.1", "169.254.1.1", "100.64.0.1", "0.0.0.0",
        "::1", "fd00::1", "fe80::1%eth0", "ff02::1", "224.0.0.1",
    ],
)
def test_non_public_addresses_including_ipv6_forms_of_private_ipv4(address: str) -> None:
    assert not is_public(address)


@pytest.mark.parametrize(
    "address",
    ["93.184.216.34", "2606:2800:220:1::1", "::ffff:93.184.216.34", "2002:5db8:d822::1",
     "64:ff9b::5db8:d822"],
)
def test_public_addresses_stay_public(address: str) -> None:
    assert is_public(address)


def test_allow_loopback_allows_loopback_only() -> None:
    policy = AddressPolicy(allow_loopback=True)
    assert policy.refusal("127.0.0.2") is None and policy.refusal("::1") is None
    assert policy.refusal("::ffff:127.0.0.1") is None  # the same socket as 127.0.0.1
    for address in ("::127.0.0.1", "64:ff9b::7f00:1", "10.0.0.1", "169.254.169.254"):
        assert policy.refusal(address), address
    assert AddressPolicy(allow_private=True).refusal("10.0.0.1") is None


def test_only_http_and_https_are_fetched() -> None:
    for url in ("http://a.example/", "HTTPS://a.example/x"):
        assert scheme_refusal(url) is None
    for url in ("file:///etc/passwd", "ftp://a.example/x", "data:text/html,hi", "s3://b/k",
                "gopher://a.example/", "//a.example/x"):
        assert scheme_refusal(url), url
    assert not is_resource_link("mailto:a@b.example") and is_resource_link("file:///x")


# -- the resolver ----------------------------------------------------------------------------
class _Receiver:
    """An ``IResolutionReceiver`` that keeps what it is told."""

    def __init__(self) -> None:
        self.addresses: list[Any] = []
        self.done = asyncio.Event()

    def resolutionBegan(self, resolution: Any) -> None:  # noqa: N802 (Twisted's interface)
        self.resolution = resolution

    def addressResolved(self, address: Any) -> None:  # noqa: N802
        self.addresses.append(address)

    def resolutionComplete(self) -> None:  # noqa: N802
        self.done.set()


async def _resolve(resolver: GuardedResolver, host: str, port: int = 80) -> list[Any]:
    receiver = _Receiver()
    resolver.resolveHostName(receiver, host, port)
    await asyncio.wait_for(receiver.done.wait(), 30)
    return receiver.addresses


@pytest.fixture
def rebinding_dns(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """This process's DNS answers ``REBIND_HOST`` first with 127.0.0.1, then with 10.0.0.1."""
    given: list[str] = []
    system = socket.getaddrinfo

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host != REBIND_HOST:
            return system(host, *args, **kwargs)
        given.append("10.0.0.1" if given else "127.0.0.1")
        return system(given[-1], *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return given


def test_a_name_is_looked_up_once_and_its_checked_address_is_the_one_connected(
    rebinding_dns: list[str],
) -> None:
    async def main() -> tuple[Any, Any, list[Any]]:
        resolver = GuardedResolver(None, AddressPolicy(allow_loopback=True))
        first = await resolver.verdict(REBIND_HOST)
        again = await resolver.verdict(REBIND_HOST.upper() + ".")
        return first, again, await _resolve(resolver, REBIND_HOST, 8080)

    first, again, connected = asyncio.run(main())
    assert first.reason is None and first.addresses == ("127.0.0.1",)
    assert again == first and rebinding_dns == ["127.0.0.1"]  # one lookup, pinned
    assert connected == [IPv4Address("TCP", "127.0.0.1", 8080)]


def test_a_refused_host_gets_no_address_to_connect_to(rebinding_dns: list[str]) -> None:
    async def main() -> tuple[Any, list[Any]]:
        resolver = GuardedResolver(None, AddressPolicy())  # loopback not allowed
        return await resolver.verdict(REBIND_HOST), await _resolve(resolver, REBIND_HOST)

    verdict, connected = asyncio.run(main())
    assert verdict.reason == "private_address" and "127.0.0.1" in (verdict.detail or "")
    assert connected == []  # even a request that skipped the middleware could not connect


def test_a_failed_lookup_refuses_the_host() -> None:
    async def main() -> tuple[Any, list[Any]]:
        resolver = GuardedResolver(None, AddressPolicy(allow_private=True))
        return await resolver.verdict("no-such-host.invalid"), await _resolve(resolver, "no-such-host.invalid")

    verdict, connected = asyncio.run(main())
    assert verdict.reason == "dns_error" and "refused" in (verdict.detail or "")
    assert connected == []


def test_a_timed_out_lookup_refuses_the_host(monkeypatch: pytest.MonkeyPatch) -> None:
    release = threading.Event()

    def slow_dns(*args: Any, **kwargs: Any) -> Any:
        release.wait(30)  # a name server that does not answer (released at the end)
        raise socket.gaierror("released")

    monkeypatch.setattr(socket, "getaddrinfo", slow_dns)

    async def main() -> Any:
        resolver = GuardedResolver(None, AddressPolicy(allow_private=True), timeout_s=0.2)
        try:
            return await resolver.verdict("slow.example")
        finally:
            release.set()

    verdict = asyncio.run(main())
    assert verdict.reason == "dns_error" and "timed out after 0.2 s" in (verdict.detail or "")


# -- DNS rebinding against a real crawl ------------------------------------------------------
class _HostLog(QuietLog, SimpleHTTPRequestHandler):
    """Serves a folder and keeps each request's Host header."""

    hosts: list[str]

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self.hosts.append(self.headers.get("Host", ""))
        super().do_GET()


@contextmanager
def _serve(address: tuple[str, int], root: Path, hosts: list[str]) -> Iterator[int]:
    handler = type("_Logged", (_HostLog,), {"hosts": hosts})
    server = ThreadingHTTPServer(address, functools.partial(handler, directory=str(root)))
    server.daemon_threads = True
    with serve_in_thread(server, f"site-{address[0]}"):
        yield server.server_address[1]


def test_a_rebinding_name_cannot_switch_the_connection(tmp_path: Path) -> None:
    """The crawler's first lookup of the name gets 127.0.0.1 (checked, allowed); every later
    lookup gets 127.0.0.2, where a trap listens on the same port. The crawl must reach only
    127.0.0.1, with the name (not the address) in the Host header."""
    site = generate_demo_site(tmp_path / "site", seed=0)
    trap = tmp_path / "trap"
    trap.mkdir()
    site_hosts: list[str] = []
    trap_hosts: list[str] = []
    with _serve((FIRST, 0), site.root, site_hosts) as port, \
            _serve((LATER, port), trap, trap_hosts):
        spec = CrawlSpec(
            topics={"lighthouse": [f"http://{REBIND_HOST}:{port}/lighthouse/page-1.html"]},
            out_dir=tmp_path / "out", state_dir=tmp_path / "state",
            crawl=CrawlConfig(allow_loopback=True, max_pages=3, max_depth=1, min_image_side=48,
                              autothrottle=False, timeout_s=120),
        )
        spec.out_dir.mkdir()
        (tmp_path / "spec.json").write_text(spec.model_dump_json(), encoding="utf-8")
        done = subprocess.run(
            [sys.executable, "-m", "tests.crawl_rebind_child", "--spec", str(tmp_path / "spec.json")],
            cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
        )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "crawl: done" in done.stdout and f"answers for {REBIND_HOST}: ['{FIRST}']" in done.stderr
    assert trap_hosts == [], f"a connection went to the rebound address {LATER}"
    assert site_hosts and set(site_hosts) == {f"{REBIND_HOST}:{port}"}
    stats = json.loads((spec.out_dir / "crawl_stats.json").read_text(encoding="utf-8"))
    assert stats["images"] > 0 and stats["pages"] == 3
