"""Sitemaps: a sitemap URL (``<urlset>`` or ``<sitemapindex>``, optionally gzipped) -> page URLs.

Bounded: at most ``max_urls`` page URLs and ``max_sitemaps`` sitemap documents fetched; an
index's child sitemaps are read breadth-first. XML is parsed with the standard library after
refusing DOCTYPE declarations (no entity expansion from a hostile sitemap).
"""

from __future__ import annotations

import gzip
import xml.etree.ElementTree as ET
import zlib
from urllib.parse import urljoin, urlsplit

from lora_factory.errors import StageError

from ._http import DEFAULT_TIMEOUT_S, fetch_bytes

MAX_SITEMAP_BYTES = 50 * 1024 * 1024  # the sitemaps.org limit for an uncompressed sitemap


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _gunzip(data: bytes, limit: int = MAX_SITEMAP_BYTES) -> bytes:
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    out = d.decompress(data, limit + 1)
    if len(out) > limit:
        raise ValueError(f"gzipped sitemap inflates beyond {limit} bytes")
    return out


def parse_sitemap(data: bytes) -> tuple[str, list[str]]:
    """(kind, locations): kind is ``"urlset"`` (page URLs) or ``"sitemapindex"`` (sitemap URLs).

    Gzip is detected by its magic bytes. Raises ``ValueError`` for anything else.
    """
    if data[:2] == b"\x1f\x8b":
        try:
            data = _gunzip(data)
        except (zlib.error, EOFError, gzip.BadGzipFile) as exc:
            raise ValueError(f"corrupt gzip: {exc}") from None
    if b"<!DOCTYPE" in data[:4096].upper() or b"<!ENTITY" in data.upper():
        raise ValueError("sitemaps must not declare a DOCTYPE or entities")
    try:
        root = ET.fromstring(data)
    except ET.ParseError as exc:
        raise ValueError(f"not XML: {exc}") from None
    kind = _local(root.tag)
    if kind not in ("urlset", "sitemapindex"):
        raise ValueError(f"root element <{kind}> is neither <urlset> nor <sitemapindex>")
    child = "url" if kind == "urlset" else "sitemap"
    locs = [
        (loc.text or "").strip()
        for entry in root
        if _local(entry.tag) == child
        for loc in entry
        if _local(loc.tag) == "loc" and (loc.text or "").strip()
    ]
    return kind, locs


def sitemap_urls(
    url: str,
    user_agent: str,
    max_urls: int = 200,
    max_sitemaps: int = 20,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> list[str]:
    """The page URLs a sitemap (or sitemap index) lists, at most ``max_urls``, order kept.

    Non-http(s) locations are skipped. Raises ``StageError`` when the first document cannot be
    fetched or parsed; a broken child sitemap of an index is skipped.
    """
    pages: list[str] = []
    seen_pages: set[str] = set()
    queue, fetched = [url], 0
    seen_maps = {url}
    while queue and fetched < max_sitemaps and len(pages) < max_urls:
        current = queue.pop(0)
        fetched += 1
        try:
            body = fetch_bytes(current, user_agent, "sitemap", timeout_s, MAX_SITEMAP_BYTES)
            kind, locs = parse_sitemap(body)
        except (StageError, ValueError) as exc:
            if current == url:
                raise StageError(f"sitemap {url} could not be read: {exc}") from None
            continue
        for loc in locs:
            loc = urljoin(current, loc)
            if urlsplit(loc).scheme not in ("http", "https"):
                continue
            if kind == "sitemapindex":
                if loc not in seen_maps:
                    seen_maps.add(loc)
                    queue.append(loc)
            elif loc not in seen_pages:
                seen_pages.add(loc)
                pages.append(loc)
                if len(pages) >= max_urls:
                    break
    return pages


def looks_like_sitemap(url: str) -> bool:
    """A seed URL that names a sitemap (``.xml`` / ``.xml.gz``, or a path containing sitemap)."""
    path = urlsplit(url).path.lower()
    return path.endswith((".xml", ".xml.gz")) or "sitemap" in path.rsplit("/", 1)[-1]
