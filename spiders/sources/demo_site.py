"""The built-in demo site: a seeded, small static website with planted junk, and a loopback server.

Why: the factory must run end to end offline, and the crawl and curate stages need a site whose
answers are known. Every image the generator writes is listed in ``ground_truth.json`` with its
kind (clean, exact_dup, byte_dup, near_dup, tiny, blurry, ad, off_topic, corrupt), topic, the
clean image it was derived from, the licence and author its page declares, and that page. The
same seed gives identical bytes for every file.
"""

from __future__ import annotations

import contextlib
import functools
import html
import io
import json
import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

from PIL import Image, ImageEnhance, ImageFilter, PngImagePlugin

from . import demo_drawings as drawings
from .loopback import QuietLog, serve_in_thread

TOPICS: tuple[str, ...] = ("lighthouse", "cactus", "sailboat")
KINDS = (
    "clean",
    "exact_dup",
    "byte_dup",
    "near_dup",
    "tiny",
    "blurry",
    "ad",
    "off_topic",
    "corrupt",
)
CLEAN_PER_TOPIC = 12
MISSING_IMAGE = "/images/misc/missing.png"  # referenced by a page, never written: a 404

PLURALS = {"lighthouse": "Lighthouses", "cactus": "Cacti", "sailboat": "Sailboats"}
AUTHORS = ("Ana Ruiz", "Tom Becker", "Mei Lin", "Olu Adeyemi", "Sara Novak", "Jon Eriksen")
LICENCE_HTML = {
    "CC-BY-4.0": 'Photos and text licensed under <a rel="license" '
    'href="https://creativecommons.org/licenses/by/4.0/">CC BY 4.0</a>.',
    "CC-BY-SA-4.0": 'Photos and text licensed under <a rel="license" '
    'href="https://creativecommons.org/licenses/by-sa/4.0/">CC BY-SA 4.0</a>.',
    "all-rights-reserved": "&copy; 2024 Demo Seaside Society. All rights reserved.",
    "unknown": "",
}
# Licence per topic page (pages 1-4) and for the topic's readers' gallery.
TOPIC_LICENCES = {
    "lighthouse": (["CC-BY-4.0"] * 4, "all-rights-reserved"),
    "cactus": (["CC-BY-SA-4.0"] * 4, "CC-BY-SA-4.0"),
    "sailboat": (
        ["CC-BY-4.0", "CC-BY-4.0", "all-rights-reserved", "all-rights-reserved"],
        "unknown",
    ),
}
SENTENCES = {
    "lighthouse": [
        "The keeper climbed the spiral stairs every evening to light the lamp.",
        "Its beam could be seen twenty nautical miles out to sea.",
        "Many lighthouses are painted in bold stripes so sailors can tell them apart by day.",
        "Storm waves break against the rocks at the foot of the tower.",
        "The lantern room is glazed on every side and crowned by a dark cupola.",
        "Automation ended the era of resident keepers in the last century.",
    ],
    "cactus": [
        "The saguaro grows slowly and may take decades to sprout its first arm.",
        "Its pleated stem swells after rain to store water for the dry months.",
        "Spines shade the surface and discourage thirsty animals.",
        "Small potted cacti thrive on a bright windowsill with little water.",
        "Pink and white flowers open at the top of the stem in late spring.",
        "Desert birds nest in hollows carved into old cactus trunks.",
    ],
    "sailboat": [
        "The mainsail and the jib together drive the boat upwind.",
        "A steady breeze filled the sails as the boat left the harbour.",
        "Sailors trim the sheets to keep the sails at the best angle to the wind.",
        "The hull heels over when a gust catches the canvas.",
        "Small dinghies race around the buoys every Sunday morning.",
        "The mast carries the rigging that holds the sails aloft.",
    ],
    "recipes": [
        "Preheat the oven and grease two round tins.",
        "Whisk the eggs with sugar until pale and fluffy.",
        "Let the tea steep for four minutes before pouring.",
        "Season the soup with salt and a little nutmeg.",
    ],
}


@dataclass(frozen=True)
class DemoSite:
    """A generated site: serve ``root`` and crawl from ``start_path`` or ``topic_urls``."""

    root: Path
    topics: tuple[str, ...]
    ground_truth: dict[str, dict[str, Any]]
    pages: tuple[str, ...] = ()
    start_path: str = "/index.html"

    def topic_urls(self, base_url: str) -> dict[str, list[str]]:
        """Seed URLs per topic: each topic's first page (the index would give every page one topic)."""
        base = base_url.rstrip("/")
        return {t: [f"{base}/{t}/page-1.html"] for t in self.topics}


@dataclass
class _Page:
    path: str
    title: str
    licence: str
    author: str | None
    author_style: str  # "meta" | "credit" | "none"
    body: list[str] = field(default_factory=list)


class _Builder:
    """Writes images and pages under ``root`` and records what each image is."""

    def __init__(self, root: Path, rng: random.Random) -> None:
        self.root, self.rng = root, rng
        self.truth: dict[str, dict[str, Any]] = {}
        self.pages: dict[str, _Page] = {}
        self.data: dict[str, bytes] = {}

    def page(self, path: str, title: str, licence: str) -> _Page:
        style = self.rng.choice(("meta", "credit", "credit", "none"))
        author = None if style == "none" else self.rng.choice(AUTHORS)
        self.pages[path] = _Page(path, title, licence, author, style)
        return self.pages[path]

    def save(self, path: str, img: Image.Image, fmt: str, **params: Any) -> bytes:
        buf = io.BytesIO()
        img.save(buf, fmt, **params)
        return self.write(path, buf.getvalue())

    def write(self, path: str, data: bytes) -> bytes:
        target = self.root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        self.data[path] = data
        return data

    def place(
        self,
        page: _Page,
        path: str,
        kind: str,
        topic: str | None,
        alt: str,
        *,
        dup_of: str | None = None,
        figure: bool = False,
        title: str | None = None,
    ) -> None:
        """Put an already written image on ``page`` and record its ground truth."""
        width = height = None
        with contextlib.suppress(OSError), Image.open(io.BytesIO(self.data[path])) as im:
            width, height = im.size
        self.truth[path] = {
            "kind": kind,
            "topic": topic,
            "dup_of": dup_of,
            "license": page.licence,
            "author": page.author,
            "page": page.path,
            "alt": alt,
            "width": width,
            "height": height,
        }
        attrs = f'src="{path}" alt="{html.escape(alt)}"'
        if title:
            attrs += f' title="{html.escape(title)}"'
        if width:
            attrs += f' width="{width}" height="{height}"'
        if figure:
            caption = html.escape(alt[:1].upper() + alt[1:] + ".") if alt else "Untitled."
            page.body.append(f"<figure><img {attrs}><figcaption>{caption}</figcaption></figure>")
        else:
            page.body.append(f"<img {attrs}>")

    def text(self, page: _Page, pool: str, n: int = 2) -> None:
        page.body.append(f"<p>{' '.join(self.rng.sample(SENTENCES[pool], n))}</p>")


def _fmt(rng: random.Random) -> tuple[str, str]:
    return ("PNG", "png") if rng.random() < 0.5 else ("JPEG", "jpg")


def _encode(fmt: str) -> dict[str, Any]:
    return {"quality": 90} if fmt == "JPEG" else {}


def _pixels(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as im:
        return im.convert("RGB")


def _near_duplicate(rng: random.Random, img: Image.Image) -> Image.Image:
    """A small crop, resize or recolour: the kind of copy a perceptual hash should catch."""
    w, h = img.size
    how = rng.choice(("crop", "recolour", "resize"))
    if how == "crop":
        dx, dy = max(1, w // 16), max(1, h // 16)
        return img.crop((dx, dy, w - dx, h - dy)).resize((w, h), Image.Resampling.BICUBIC)
    if how == "recolour":
        return ImageEnhance.Color(ImageEnhance.Brightness(img).enhance(1.12)).enhance(0.8)
    return img.resize((max(8, w * 9 // 10), max(8, h * 9 // 10)), Image.Resampling.LANCZOS)


def _topic_images(b: _Builder, topic: str) -> None:
    rng, draw = b.rng, drawings.TOPIC_DRAWINGS[topic]
    licences, gallery_licence = TOPIC_LICENCES[topic]
    pages = [
        b.page(f"/{topic}/page-{i}.html", f"{PLURALS[topic]} \u2014 page {i}", licences[i - 1])
        for i in range(1, 5)
    ]
    gallery = b.page(
        f"/{topic}/gallery.html", f"Readers' {PLURALS[topic].lower()}", gallery_licence
    )
    clean: list[tuple[str, str]] = []  # (path, alt)
    for i in range(CLEAN_PER_TOPIC):
        fmt, ext = _fmt(rng)
        img, alt = draw(rng, rng.randint(96, 192), rng.randint(96, 192))
        path = f"/images/{topic}/{topic}-{i + 1:02d}.{ext}"
        b.save(path, img, fmt, **_encode(fmt))
        clean.append((path, alt))
    near_a, near_b, exact_a, exact_b, byte_src, thumb_src = rng.sample(range(CLEAN_PER_TOPIC), 6)

    for n, page in enumerate(pages):
        b.text(page, topic)
        for j, k in enumerate(range(n * 3, n * 3 + 3)):
            path, alt = clean[k]
            if topic == "lighthouse" and k == CLEAN_PER_TOPIC - 1:
                alt = ""  # the planted image without alt text
            b.place(
                page,
                path,
                "clean",
                topic,
                alt,
                figure=j != 1 and bool(alt),
                title=f"{topic.capitalize()} no. {k + 1}" if j == 2 else None,
            )
            if j == 1:
                b.text(page, topic, 1)
    # Junk, one kind per page so the crawler's provenance is easy to check.
    ad = f"/ads/banner-{topic}.png"
    b.save(ad, drawings.ad_banner(rng, 468, 60)[0], "PNG")
    b.place(pages[0], ad, "ad", None, "advertisement")

    icon = f"/images/{topic}/icon.png"
    b.save(icon, draw(rng, 24, 24)[0], "PNG")
    b.place(pages[1], icon, "tiny", topic, f"{topic} icon")
    for page, src, name in ((pages[1], near_a, "13"), (pages[3], near_b, "14")):
        path = f"/images/{topic}/{topic}-{name}.jpg"
        b.save(
            path,
            _near_duplicate(rng, _pixels(b.data[clean[src][0]])),
            "JPEG",
            quality=rng.choice((35, 60)),
        )
        b.place(page, path, "near_dup", topic, clean[src][1], dup_of=clean[src][0], figure=True)

    blurry = f"/images/{topic}/{topic}-15.jpg"
    img, alt = draw(rng, rng.randint(120, 192), rng.randint(120, 192))
    b.save(blurry, img.filter(ImageFilter.GaussianBlur(rng.uniform(6.0, 9.0))), "JPEG", quality=85)
    b.place(pages[2], blurry, "blurry", topic, alt, figure=True)
    thumb = f"/images/{topic}/thumbs/{topic}-{thumb_src + 1:02d}-small.jpg"
    b.save(
        thumb,
        _pixels(b.data[clean[thumb_src][0]]).resize((40, 30), Image.Resampling.LANCZOS),
        "JPEG",
        quality=80,
    )
    b.place(pages[2], thumb, "tiny", topic, clean[thumb_src][1], dup_of=clean[thumb_src][0])

    b.text(gallery, topic)
    for n, src in enumerate((exact_a, exact_b), start=1):
        # Same decoded pixels, different bytes: re-encoded losslessly with a comment chunk.
        info = PngImagePlugin.PngInfo()
        info.add_text("Comment", f"re-uploaded by reader {n}")
        path = f"/uploads/{topic}/reader-{n}.png"
        b.save(path, _pixels(b.data[clean[src][0]]), "PNG", pnginfo=info, compress_level=1)
        b.place(gallery, path, "exact_dup", topic, clean[src][1], dup_of=clean[src][0], figure=True)
    mirror = "/mirror" + clean[byte_src][0]
    b.write(mirror, b.data[clean[byte_src][0]])
    b.place(
        gallery,
        mirror,
        "byte_dup",
        topic,
        clean[byte_src][1],
        dup_of=clean[byte_src][0],
        figure=True,
    )
    b.text(gallery, topic, 1)


def _other_pages(b: _Builder) -> None:
    rng = b.rng
    cake = b.page("/recipes/lemon-cake.html", "Lemon cake and pumpkin soup", "all-rights-reserved")
    tea = b.page("/recipes/tea.html", "How to brew tea", "all-rights-reserved")
    b.text(cake, "recipes")
    for path, draw, page in (
        ("/recipes/img/cake-1.jpg", drawings.lemon_cake, cake),
        ("/recipes/img/cake-2.png", drawings.lemon_cake, cake),
        ("/recipes/img/soup.jpg", drawings.soup_bowl, cake),
        ("/recipes/img/teapot-1.jpg", drawings.teapot, tea),
        ("/recipes/img/teapot-2.png", drawings.teapot, tea),
    ):
        img, alt = draw(rng, rng.randint(110, 180), rng.randint(110, 180))
        fmt = "PNG" if path.endswith(".png") else "JPEG"
        b.save(path, img, fmt, **_encode(fmt))
        b.place(page, path, "off_topic", None, alt, figure=True)
        b.text(page, "recipes", 1)

    about = b.page("/about.html", "About the Demo Seaside Society", "unknown")
    about.body.append("<p>We are a club of amateur photographers who love coasts and deserts.</p>")
    b.save("/images/logo.png", drawings.logo(rng, 120, 120)[0], "PNG")
    b.place(about, "/images/logo.png", "off_topic", None, "the Demo Seaside Society logo")

    news = b.page("/news.html", "Club news", "CC-BY-4.0")
    news.body.append(
        "<p>Our summer exhibition opens next month. Some pictures are still uploading.</p>"
    )
    b.save("/ads/sale.png", drawings.ad_banner(rng, 300, 250)[0], "PNG")
    b.place(news, "/ads/sale.png", "ad", None, "advertisement")
    full = io.BytesIO()
    drawings.sailboat(rng, 160, 120)[0].save(full, "JPEG", quality=90)
    b.write(
        "/images/misc/broken.jpg", full.getvalue()[: len(full.getvalue()) // 2]
    )  # truncated upload
    b.place(news, "/images/misc/broken.jpg", "corrupt", None, "exhibition poster")
    news.body.append(f'<img src="{MISSING_IMAGE}" alt="exhibition map">')

    contact = b.page("/contact.html", "Contact", "unknown")
    contact.body.append('<p>Write to <a href="mailto:club@example.org">club@example.org</a>.</p>')
    recipes = b.page("/recipes/index.html", "Recipes from our members", "all-rights-reserved")
    recipes.body.append(
        '<ul><li><a href="lemon-cake.html">Lemon cake</a></li><li><a href="tea.html">Tea</a></li></ul>'
    )
    index = b.page("/index.html", "Demo Seaside Society", "CC-BY-4.0")
    links = "".join(
        f'<li><a href="/{t}/page-1.html">{PLURALS[t]}</a> (<a href="/{t}/gallery.html">readers\' '
        f"pictures</a>)</li>"
        for t in TOPICS
    )
    index.body.append(
        f"<p>Pictures of the coast and the desert by our members.</p><ul>{links}</ul>"
        '<ul><li><a href="/news.html">News</a></li><li><a href="/recipes/index.html">Recipes</a></li>'
        '<li><a href="/about.html">About</a></li><li><a href="/contact.html">Contact</a></li></ul>'
    )


def _nav(page: _Page) -> str:
    parts = ['<a href="/index.html">Home</a>', '<a href="#top">Top</a>']
    topic = page.path.split("/")[1]
    if topic in TOPICS:
        parts += [f'<a href="page-{i}.html">{i}</a>' for i in range(1, 5)]
        parts.append(f'<a href="/{topic}/gallery.html">Readers\' pictures</a>')
        if page.path.endswith("page-2.html"):
            parts.append('<a href="/recipes/lemon-cake.html">Something different: a cake</a>')
    parts.append('<a href="https://example.com/partner">Our partner</a>')
    return " | ".join(parts)


def _render(page: _Page) -> str:
    meta = (
        f'<meta name="author" content="{html.escape(page.author)}">'
        if page.author_style == "meta"
        else ""
    )
    credit = (
        f'<p class="credit">Photos by <a rel="author" href="/about.html">{html.escape(page.author)}</a></p>'
        if page.author_style == "credit" and page.author
        else ""
    )
    licence = (
        f'<p class="license">{LICENCE_HTML[page.licence]}</p>' if LICENCE_HTML[page.licence] else ""
    )
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(page.title)}</title>'
        f'{meta}</head>\n<body id="top"><header><nav>{_nav(page)}</nav></header>\n'
        f"<main><h1>{html.escape(page.title)}</h1>\n" + "\n".join(page.body) + "\n</main>\n"
        f"<footer>{credit}{licence}</footer></body></html>\n"
    )


def generate_demo_site(out_dir: Path, seed: int = 0) -> DemoSite:
    """Write the site under ``out_dir`` (served as-is) plus ``ground_truth.json``; same seed, same bytes."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    builder = _Builder(out_dir, random.Random(seed))
    for topic in TOPICS:
        _topic_images(builder, topic)
    _other_pages(builder)
    for page in builder.pages.values():
        target = out_dir / page.path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(_render(page), encoding="utf-8")
    (out_dir / "robots.txt").write_text("User-agent: *\nAllow: /\n", encoding="utf-8")
    truth = dict(sorted(builder.truth.items()))
    (out_dir / "ground_truth.json").write_text(
        json.dumps(truth, indent=2, sort_keys=True) + "\n", encoding="utf-8"
    )
    return DemoSite(
        root=out_dir, topics=TOPICS, ground_truth=truth, pages=tuple(sorted(builder.pages))
    )


class _QuietHandler(QuietLog, SimpleHTTPRequestHandler):
    """Static files with explicit content types and no per-request log lines."""

    extensions_map: ClassVar[dict[str, str]] = {
        **SimpleHTTPRequestHandler.extensions_map,
        ".html": "text/html; charset=utf-8",
        ".txt": "text/plain; charset=utf-8",
        ".json": "application/json",
        ".png": "image/png",
        ".jpg": "image/jpeg",
        ".jpeg": "image/jpeg",
    }


class _CountingHandler(_QuietHandler):
    hits: ClassVar[Counter[str] | None] = None

    def send_head(self) -> Any:
        if self.hits is not None:
            self.hits[self.path.split("?", 1)[0]] += 1
        return super().send_head()


@contextlib.contextmanager
def serve_site(root: Path, hits: Counter[str] | None = None, port: int = 0) -> Iterator[str]:
    """Serve ``root`` on 127.0.0.1 (``port``, or a free one) from a daemon thread; yields the
    base URL. If ``port`` is taken, a free port is used instead.

    With ``hits``, every request's path is counted there (tests prove nothing is fetched twice).
    """
    base: type[_QuietHandler] = _QuietHandler
    if hits is not None:
        base = type("_Counting", (_CountingHandler,), {"hits": hits})
    handler = functools.partial(base, directory=str(root))
    try:
        server = ThreadingHTTPServer(("127.0.0.1", port), handler)
    except OSError:
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    with serve_in_thread(server, "demo-site") as base:
        yield base
