"""A hostile little website on loopback: every way a page or an image can go wrong, once.

Why: the crawler's hardening (type and magic-byte checks, size and pixel limits, the bomb guard,
redirect and private-address rules, robots.txt, noai opt-outs, page quality) is only real if a
crawl against all of it finishes, records each case with the right reason and writes nothing
where it should not. ``EXPECTED_IMAGES`` and ``EXPECTED_PAGES`` are the answers.

The server is bounded: slow and "timeout" handlers wait on the server's stop event (never longer
than ``HANG_S``), the 100 MB responses stop when the client hangs up, and private-address
redirects point at 10.0.0.1 / 192.168.77.77, which the crawler must refuse without connecting.
Every request is counted (``FaultSite.hits``) so tests can prove what was, and was not, fetched.

The guard's cases: ``/schemes.html`` links and embeds ``file:``, ``ftp:`` and ``data:`` URLs
(``file://127.0.0.1/...`` names this very host), ``/ipv6.html`` embeds images on IPv6 forms
that carry a private IPv4 address and on a host whose DNS lookup fails, and two pages redirect
to ``file:`` and to the NAT64 form of the cloud metadata address. None of them may become a
request; each is recorded with its reason (``EXPECTED_REFUSED_LINKS``, ``EXPECTED_IMAGES``).
"""

from __future__ import annotations

import contextlib
import io
import struct
import threading
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from PIL import Image, ImageDraw

from .loopback import QuietLog, send_body, serve_in_thread

SLOW_S = 0.5  # slower than usual, well within the crawler's timeout
HANG_S = 4.0  # longer than the test's download_timeout_s
HUGE_BYTES = 100 * 1024 * 1024
CHUNK = 64 * 1024
PRIVATE_IMAGE_TARGET = "http://10.0.0.1/stolen.png"
PRIVATE_PAGE_TARGET = "http://192.168.77.77/admin.html"
METADATA_NAT64_TARGET = "http://[64:ff9b::a9fe:a9fe]/latest/meta-data/"  # 169.254.169.254
NO_DNS_HOST = "no-such-host.invalid"  # RFC 2606: never resolves
DATA_IMAGE = "data:image/gif;base64,R0lGODlhAQABAAAAACw="
# Absolute image URLs the crawler must refuse without a request -> the reason it records.
REFUSED_IMAGES: dict[str, str] = {
    "file:///dev/zero": "unsupported_scheme",  # would read until memory runs out
    "ftp://127.0.0.1/img/ftp.png": "unsupported_scheme",
    DATA_IMAGE: "unsupported_scheme",
    "http://[::127.0.0.1]/img/v4-compatible-loopback.png": "private_address",
    "http://[::10.0.0.1]/img/v4-compatible.png": "private_address",
    "http://[::ffff:10.0.0.1]/img/v4-mapped.png": "private_address",
    "http://[2002:a9fe:a9fe::1]/img/6to4.png": "private_address",
    "http://[64:ff9b::a9fe:a9fe]/img/nat64.png": "private_address",
    "http://[64:ff9b:1::a00:1]/img/nat64-local.png": "private_address",
    "http://[fec0::1]/img/site-local.png": "private_address",
    f"http://{NO_DNS_HOST}/img/no-dns.png": "dns_error",
}
# Links on /schemes.html: recorded in pages.parquet, never requested.
EXPECTED_REFUSED_LINKS: dict[str, tuple[str, str]] = {
    "file:///etc/passwd": ("error", "unsupported_scheme"),
    "file://127.0.0.1/etc/hostname": ("error", "unsupported_scheme"),  # this very host
    "ftp://127.0.0.1/pub/index.html": ("error", "unsupported_scheme"),
    "data:text/html;base64,PGgxPmhpPC9oMT4=": ("error", "unsupported_scheme"),
}

# image path -> "item" or the rejection reason the crawler must record
EXPECTED_IMAGES: dict[str, str] = {
    "/img/good-1.png": "item",
    "/img/good-2.jpg": "item",
    "/img/good-3.gif": "item",  # converted to PNG
    "/img/good-4.webp": "item",  # converted to PNG
    "/img/slow.png": "item",
    "/img/otherbot-noai.png": "item",  # X-Robots-Tag addressed to another crawler
    "/img/slow-page.png": "item",  # on the slow page
    "/img/tiny.png": "too_small",
    "/img/missing.png": "http_404",
    "/img/error.png": "http_500",
    "/img/hang.png": "timeout",
    "/img/truncated.jpg": "undecodable",
    "/img/corrupt.png": "undecodable",
    "/img/bomb.png": "decompression_bomb",
    "/img/huge.jpg": "too_large",  # 100 MB, announced by Content-Length
    "/img/huge-stream.jpg": "too_large",  # 100 MB, no Content-Length
    "/img/html-as-jpeg.jpg": "bad_magic",
    "/img/banner": "not_image",  # text/html at an image URL
    "/img/loop-a.png": "redirect_loop",
    "/img/to-private.png": "private_address",
    "/private/secret.png": "robots_txt",
    "/img/noai.png": "noai",  # X-Robots-Tag: noimageai on the image
    "/img/noai-page-1.png": "noai",  # on the X-Robots-Tag: noai page, never fetched
    "/img/noai-page-2.png": "noai",
    "/img/noai-meta.png": "noai",  # on the meta robots page, never fetched
    **REFUSED_IMAGES,
}
# page path -> (decision, reason)
EXPECTED_PAGES: dict[str, tuple[str, str | None]] = {
    "/index.html": ("parsed", None),
    "/slow.html": ("parsed", None),
    "/noai-header.html": ("parsed", "noai"),
    "/noai-meta.html": ("parsed", "noai"),
    "/missing.html": ("error", "http_404"),
    "/error.html": ("error", "http_500"),
    "/hang.html": ("error", "timeout"),
    "/loop-1.html": ("error", "redirect_loop"),
    "/to-private.html": ("error", "private_address"),
    "/private/page.html": ("error", "robots_txt"),
    "/german.html": ("rejected", "language"),
    "/adfarm.html": ("rejected", "ad_farm"),
    "/stuffed.html": ("rejected", "low_entropy"),
    "/schemes.html": ("parsed", None),
    "/ipv6.html": ("parsed", None),
    "/to-file.html": ("error", "unsupported_scheme"),
    "/to-metadata.html": ("error", "private_address"),
}
# Images on rejected pages: never requested.
UNFETCHED_IMAGES = ("/img/german.png", "/img/adfarm.png", "/img/stuffed.png")

ENGLISH = (
    "The old lighthouse stands on a granite headland above the harbour. Its keepers climbed "
    "the spiral stairs each evening to light the lamp, and the beam could be seen from twenty "
    "miles out at sea. Today the tower is automated, but visitors still walk the coastal path "
    "to watch the waves break against the rocks at its foot, and painters come every summer "
    "to capture the white tower against the changing sky."
)
GERMAN = (
    "Der alte Leuchtturm steht auf einer felsigen Landzunge über dem Hafen. Jeden Abend stiegen "
    "die Wärter die Wendeltreppe hinauf, um die Lampe anzuzünden, und der Lichtstrahl war noch "
    "in zwanzig Seemeilen Entfernung zu sehen. Heute arbeitet der Turm automatisch, aber "
    "Besucher wandern immer noch den Küstenweg entlang und beobachten die Wellen."
)


def _png(size: tuple[int, int], colour: str, mode: str = "RGB") -> bytes:
    img = Image.new(mode, size, colour)
    ImageDraw.Draw(img).ellipse((4, 4, size[0] - 4, size[1] - 4), outline="black", width=3)
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def _encode(size: tuple[int, int], colour: str, fmt: str) -> bytes:
    img = Image.new("RGB", size, colour)
    ImageDraw.Draw(img).rectangle((8, 8, size[0] - 8, size[1] - 8), outline="white", width=4)
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(side: int = 20_000) -> bytes:
    """A valid 1-bit PNG of ``side`` x ``side`` zeros: ~50 KB on the wire, 400 Mpx decoded."""
    row = b"\x00" * (1 + (side + 7) // 8)  # filter byte + packed bits
    comp = zlib.compressobj(9)
    parts = [comp.compress(row) for _ in range(side)]
    idat = b"".join(parts) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def _page(title: str, body: str, head: str = "") -> bytes:
    return (
        f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title}</title>"
        f"{head}</head><body><h1>{title}</h1>{body}</body></html>"
    ).encode()


def _fig(src: str, alt: str) -> str:
    return f'<figure><img src="{src}" alt="{alt}"><figcaption>{alt}</figcaption></figure>'


@dataclass
class Route:
    status: int = 200
    body: bytes = b""
    content_type: str = "text/html; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    stream: Callable[[Any], None] | None = None  # writes the body itself


def build_routes() -> dict[str, Route]:
    r: dict[str, Route] = {}
    jpeg = _encode((160, 120), "navy", "JPEG")
    r["/robots.txt"] = Route(body=b"User-agent: *\nDisallow: /private/\n", content_type="text/plain")
    r["/img/good-1.png"] = Route(body=_png((128, 96), "red"), content_type="image/png")
    r["/img/good-2.jpg"] = Route(body=jpeg, content_type="image/jpeg")
    r["/img/good-3.gif"] = Route(body=_encode((100, 100), "green", "GIF"), content_type="image/gif")
    r["/img/good-4.webp"] = Route(
        body=_encode((120, 90), "purple", "WEBP"), content_type="image/webp"
    )
    r["/img/slow.png"] = Route(body=_png((96, 96), "orange"), content_type="image/png", delay=SLOW_S)
    r["/img/otherbot-noai.png"] = Route(
        body=_png((96, 80), "teal"), content_type="image/png",
        headers={"X-Robots-Tag": "otherbot: noai, noimageai"},
    )
    r["/img/slow-page.png"] = Route(body=_png((100, 64), "gold"), content_type="image/png")
    r["/img/tiny.png"] = Route(body=_png((20, 20), "blue"), content_type="image/png")
    r["/img/error.png"] = Route(status=500, body=b"oops")
    r["/img/hang.png"] = Route(body=_png((64, 64), "grey"), content_type="image/png", delay=HANG_S)
    r["/img/truncated.jpg"] = Route(
        body=_encode((400, 300), "maroon", "JPEG")[:1500], content_type="image/jpeg"
    )
    r["/img/corrupt.png"] = Route(
        body=b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8, content_type="image/png"
    )
    r["/img/bomb.png"] = Route(body=bomb_png(), content_type="image/png")
    r["/img/huge.jpg"] = Route(content_type="image/jpeg", stream=_huge(with_length=True))
    r["/img/huge-stream.jpg"] = Route(content_type="image/jpeg", stream=_huge(with_length=False))
    r["/img/html-as-jpeg.jpg"] = Route(
        body=_page("Not a picture", "<p>Gotcha</p>"), content_type="image/jpeg"
    )
    r["/img/banner"] = Route(body=_page("Banner", "<p>Click here</p>"))
    r["/img/loop-a.png"] = Route(status=302, headers={"Location": "/img/loop-b.png"})
    r["/img/loop-b.png"] = Route(status=302, headers={"Location": "/img/loop-a.png"})
    r["/img/to-private.png"] = Route(status=302, headers={"Location": PRIVATE_IMAGE_TARGET})
    r["/private/secret.png"] = Route(body=_png((90, 90), "black"), content_type="image/png")
    r["/img/noai.png"] = Route(
        body=_png((90, 90), "pink"), content_type="image/png",
        headers={"X-Robots-Tag": "noimageai"},
    )
    for name in ("noai-page-1", "noai-page-2", "noai-meta", "german", "adfarm", "stuffed"):
        r[f"/img/{name}.png"] = Route(body=_png((90, 90), "white"), content_type="image/png")

    images = "".join(
        _fig(p, f"picture {i}") for i, p in enumerate(
            [
                "/img/good-1.png", "/img/good-2.jpg", "/img/good-3.gif", "/img/good-4.webp",
                "/img/slow.png", "/img/otherbot-noai.png", "/img/tiny.png", "/img/missing.png",
                "/img/error.png", "/img/hang.png", "/img/truncated.jpg", "/img/corrupt.png",
                "/img/bomb.png", "/img/huge.jpg", "/img/huge-stream.jpg",
                "/img/html-as-jpeg.jpg", "/img/banner", "/img/loop-a.png",
                "/img/to-private.png", "/private/secret.png", "/img/noai.png",
            ]
        )
    )
    links = " ".join(
        f'<a href="{p}">{p.strip("/").split(".")[0].replace("-", " ")}</a>'
        for p in EXPECTED_PAGES
        if p != "/index.html"
    )
    text = f"<p>{ENGLISH}</p><p>{ENGLISH}</p>"
    r["/index.html"] = Route(body=_page("Lighthouses of the coast", f"{text}{images}<nav>{links}</nav>"))
    r["/slow.html"] = Route(
        body=_page("A slow page", f"<p>{ENGLISH}</p>{_fig('/img/slow-page.png', 'slow')}"),
        delay=SLOW_S,
    )
    r["/noai-header.html"] = Route(
        body=_page(
            "No AI, says the header",
            f"<p>{ENGLISH}</p>{_fig('/img/noai-page-1.png', 'one')}{_fig('/img/noai-page-2.png', 'two')}",
        ),
        headers={"X-Robots-Tag": "noai"},
    )
    r["/noai-meta.html"] = Route(
        body=_page(
            "No AI, says the meta tag",
            f"<p>{ENGLISH}</p>{_fig('/img/noai-meta.png', 'meta')}",
            head='<meta name="robots" content="noai, noimageai">',
        )
    )
    r["/error.html"] = Route(status=500, body=_page("Error", "<p>Internal error</p>"))
    r["/hang.html"] = Route(body=_page("Hang", f"<p>{ENGLISH}</p>"), delay=HANG_S)
    r["/loop-1.html"] = Route(status=301, headers={"Location": "/loop-2.html"})
    r["/loop-2.html"] = Route(status=301, headers={"Location": "/loop-1.html"})
    r["/to-private.html"] = Route(status=302, headers={"Location": PRIVATE_PAGE_TARGET})
    r["/private/page.html"] = Route(body=_page("Private", f"<p>{ENGLISH}</p>"))
    r["/german.html"] = Route(
        body=_page("Leuchttürme", f"<p>{GERMAN}</p>{_fig('/img/german.png', 'Leuchtturm')}")
    )
    spam = " ".join(
        f'<a href="https://spam.example/{i}">Buy cheap watches casino bonus deal number {i}</a>'
        for i in range(40)
    )
    r["/adfarm.html"] = Route(
        body=_page(
            "Best deals",
            f'<div class="ad-banner">Sponsored offers for you today only</div>{spam}'
            f"<p>Lighthouse.</p>{_fig('/img/adfarm.png', 'deal')}",
        )
    )
    _guard_routes(r)
    r["/stuffed.html"] = Route(
        body=_page(
            "lighthouse pictures",
            "<p>" + "lighthouse pictures cheap " * 60 + "</p>" + _fig("/img/stuffed.png", "cheap"),
        )
    )
    return r


def _guard_routes(r: dict[str, Route]) -> None:
    """Pages whose links, images and redirects the address guard must refuse."""
    links = " ".join(f'<a href="{url}">{name}</a>' for name, url in zip(
        ("passwords", "host name", "archive", "inline page"), EXPECTED_REFUSED_LINKS, strict=True))
    other_schemes = "".join(_fig(u, "elsewhere") for u in REFUSED_IMAGES if not u.startswith("http"))
    other_hosts = "".join(_fig(u, "elsewhere") for u in REFUSED_IMAGES if u.startswith("http"))
    r["/schemes.html"] = Route(
        body=_page("Other schemes", f"<p>{ENGLISH}</p><p>{links}</p>{other_schemes}")
    )
    r["/ipv6.html"] = Route(body=_page("Other addresses", f"<p>{ENGLISH}</p>{other_hosts}"))
    r["/to-file.html"] = Route(status=302, headers={"Location": "file:///etc/passwd"})
    r["/to-metadata.html"] = Route(status=302, headers={"Location": METADATA_NAT64_TARGET})


def _huge(with_length: bool) -> Callable[[Any], None]:
    def stream(handler: Any) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "image/jpeg")
        if with_length:
            handler.send_header("Content-Length", str(HUGE_BYTES))
        handler.send_header("Connection", "close")
        handler.end_headers()
        handler.close_connection = True
        block = b"\xff\xd8\xff\xe0" + b"\x00" * (CHUNK - 4)
        sent = 0
        while sent < HUGE_BYTES and not handler.server.stop.is_set():
            handler.wfile.write(block if sent == 0 else b"\x00" * CHUNK)
            sent += CHUNK

    return stream


class _Handler(QuietLog, BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        path = self.path.split("?", 1)[0]
        with self.server.lock:
            self.server.hits[path] += 1
        route = self.server.routes.get(path)
        if route is None:
            route = Route(status=404, body=_page("Not found", "<p>Nothing here.</p>"))
        if route.delay and self.server.stop.wait(route.delay):
            return
        try:
            if route.stream is not None:
                route.stream(self)
                return
            send_body(self, route.status, route.content_type, route.body, route.headers)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, routes: dict[str, Route]) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.routes = routes
        self.hits: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.stop = threading.Event()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Silent: a client hanging up mid-body is what this site provokes."""


@dataclass
class FaultSite:
    base_url: str
    hits: Counter[str]  # path -> number of requests served (including 404s)

    @property
    def start_url(self) -> str:
        return self.base_url + "/index.html"


@contextlib.contextmanager
def serve_fault_site() -> Iterator[FaultSite]:
    """Serve the fault site on 127.0.0.1 (a free port) from a daemon thread."""
    server = _Server(build_routes())
    with serve_in_thread(server, "fault-site") as base:
        try:
            yield FaultSite(base, server.hits)
        finally:
            server.stop.set()  # release slow responses before the shutdown waits for them
