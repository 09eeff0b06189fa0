"""The url-list downloader (``spiders.urlcrawl``, no Scrapy) applies the crawl's checks: the
address guard (also on redirects), robots.txt, noai, size and image validation, and resumes from
its journal. In-process on a loopback site; every outcome is read from the crawl's own files."""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from PIL import Image

from lora_factory.config import CrawlConfig
from spiders.sources.loopback import QuietLog, send_body, serve_in_thread
from spiders.spec import CrawlSpec
from spiders.urlcrawl import crawl_url_list, uses_url_fetcher

MAX_BYTES = 4096


def png(seed: int, size: tuple[int, int] = (64, 48)) -> bytes:
    img = Image.new("RGB", size, (seed * 37 % 256, seed * 91 % 256, seed * 53 % 256))
    img.putpixel((seed % size[0], 0), (255 - seed % 256, 0, 0))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def noisy_png(size: int) -> bytes:
    """A PNG far larger than MAX_BYTES (random pixels do not compress)."""
    import os

    buf = io.BytesIO()
    Image.frombytes("RGB", (size, size), os.urandom(size * size * 3)).save(buf, "PNG")
    return buf.getvalue()


@dataclass
class Site:
    base: str = ""
    requests: list[str] = field(default_factory=list)


ROUTES: dict[str, tuple[int, str, bytes, dict[str, str]]] = {
    "/robots.txt": (200, "text/plain", b"User-agent: *\nDisallow: /private/\n", {}),
    "/private/a.png": (200, "image/png", png(1), {}),
    "/noai.png": (200, "image/png", png(2), {"X-Robots-Tag": "noai"}),
    "/otherbot.png": (200, "image/png", png(3), {"X-Robots-Tag": "otherbot: noai"}),
    "/to-private.png": (302, "text/plain", b"", {"Location": "http://10.255.0.1/x.png"}),
    "/to-ok.png": (301, "text/plain", b"", {"Location": "/ok/moved.png"}),
    "/ok/moved.png": (200, "image/png", png(4), {}),
    "/big.png": (200, "image/png", noisy_png(64), {}),
    "/corrupt.png": (200, "image/png", b"\x89PNG\r\n\x1a\n" + b"\0" * 64, {}),
    "/page.png": (200, "text/html", b"<html>hi</html>", {}),
    **{f"/img/{i}.png": (200, "image/png", png(10 + i), {}) for i in range(6)},
}


@contextmanager
def site() -> Iterator[Site]:
    state = Site()

    class Handler(QuietLog, BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:  # noqa: N802
            state.requests.append(self.path)
            status, ctype, body, headers = ROUTES.get(self.path, (404, "text/plain", b"no", {}))
            send_body(self, status, ctype, body, headers)

    with serve_in_thread(ThreadingHTTPServer(("127.0.0.1", 0), Handler), "urlfetch-site") as base:
        state.base = base
        yield state


def spec(tmp: Path, urls: list[str], **config: Any) -> CrawlSpec:
    settings = {"source": "urls", "urls_file": "unused.txt", "allow_loopback": True, "autothrottle": False,
                "min_image_side": 16, "max_image_bytes": MAX_BYTES, "timeout_s": 120.0, **config}
    images = [{"image_url": u, "page_url": u, "license": "CC0", "alt_text": f"caption of {u}"} for u in urls]
    return CrawlSpec(topics={"things": []}, out_dir=tmp / "crawl", crawl=CrawlConfig(**settings),
                     state_dir=tmp / "state", images={"things": images})


def outcomes(tmp: Path) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    items = {r["image_url"]: r for r in pq.read_table(tmp / "crawl" / "items.parquet").to_pylist()}
    rejected = {r["url"]: r["reason"] for r in pq.read_table(tmp / "crawl" / "rejected.parquet").to_pylist()}
    return items, rejected


def test_every_check_of_the_crawl_applies(tmp_path: Path) -> None:
    paths = ["/img/0.png", "/private/a.png", "/noai.png", "/otherbot.png", "/to-private.png", "/to-ok.png",
             "/big.png", "/corrupt.png", "/page.png", "/missing.png", "ftp://example.org/x.png"]
    with site() as srv:
        urls = [p if "://" in p else srv.base + p for p in paths]
        the_spec = spec(tmp_path, urls)
        assert uses_url_fetcher(the_spec)
        stats = crawl_url_list(the_spec)
    items, rejected = outcomes(tmp_path)
    b = srv.base
    assert set(items) == {f"{b}/img/0.png", f"{b}/otherbot.png", f"{b}/to-ok.png"}
    assert items[f"{b}/img/0.png"]["alt_text"] == f"caption of {b}/img/0.png"
    assert {r["license"] for r in items.values()} == {"CC0"} and {r["topic"] for r in items.values()} == {"things"}
    assert rejected == {
        f"{b}/private/a.png": "robots_txt", f"{b}/noai.png": "noai", f"{b}/to-private.png": "private_address",
        f"{b}/big.png": "too_large", f"{b}/corrupt.png": "undecodable", f"{b}/page.png": "not_image",
        f"{b}/missing.png": "http_404", "ftp://example.org/x.png": "unsupported_scheme",
    }
    assert "/private/a.png" not in srv.requests  # robots.txt read first, the image never asked for
    assert srv.requests.count("/robots.txt") == 1
    assert stats["images"] == 3 and stats["rejected"] == 8 and stats["robots_forbidden"] == 1
    assert stats["finish_reason"] == "finished" and stats["pages"] == 0
    stored = sorted(p.name for p in (tmp_path / "crawl" / "images").iterdir())
    assert stored == sorted(Path(r["image_path"]).name for r in items.values())


def test_a_loopback_site_is_refused_unless_allowed(tmp_path: Path) -> None:
    with site() as srv:
        stats = crawl_url_list(spec(tmp_path, [srv.base + "/img/0.png"], allow_loopback=False))
    _, rejected = outcomes(tmp_path)
    assert rejected == {srv.base + "/img/0.png": "private_address"}
    assert srv.requests == [] and stats["images"] == 0 and stats["requests"] == 0


def test_robots_and_noai_are_not_checked_when_switched_off(tmp_path: Path) -> None:
    with site() as srv:
        crawl_url_list(spec(tmp_path, [srv.base + "/private/a.png", srv.base + "/noai.png"],
                            obey_robots=False, honour_noai=False))
    items, rejected = outcomes(tmp_path)
    assert len(items) == 2 and rejected == {} and "/robots.txt" not in srv.requests
    assert {r["robots"] for r in items.values()} == {"not_checked"}


def test_a_resumed_crawl_never_fetches_a_done_url_again(tmp_path: Path) -> None:
    with site() as srv:
        urls = [f"{srv.base}/img/{i}.png" for i in range(6)]
        first = crawl_url_list(spec(tmp_path, urls, max_images=2, concurrent_requests=1))
        done = {p for p in srv.requests if p.startswith("/img/")}
        srv.requests.clear()
        second = crawl_url_list(spec(tmp_path, urls, max_images=100))
    assert first["images"] == 2 and first["finish_reason"] == "max_images" and len(done) == 2
    assert second["resumed"] and second["sessions"] == 2 and second["images"] == 6
    assert not done & set(srv.requests)  # the first attempt's images are not downloaded again
    assert sorted(p for p in srv.requests if p.startswith("/img/")) == sorted(
        f"/img/{i}.png" for i in range(6) if f"/img/{i}.png" not in done)
    items, _ = outcomes(tmp_path)
    assert sorted(items) == sorted(urls)
