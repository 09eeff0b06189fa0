"""What a page says about its images: alt/title text, captions, nearby text, licence and author.

Why a separate module: the provenance rules (which licence a page declares, who took the
pictures) are the part of the crawl most likely to be argued about and extended, so they are
plain functions on a parsel ``Selector`` that tests can call without a crawl.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urldefrag, urljoin

from parsel import Selector

from .guard import is_resource_link, scheme_refusal

SURROUNDING_CHARS = 300

_CC_URL = re.compile(r"creativecommons\.org/licenses/([a-z-]+)/(\d+(?:\.\d+)?)", re.IGNORECASE)
_CC0_URL = re.compile(r"creativecommons\.org/publicdomain/zero/(\d+(?:\.\d+)?)", re.IGNORECASE)
_PDM_URL = re.compile(r"creativecommons\.org/publicdomain/mark/", re.IGNORECASE)
_CC_TEXT = re.compile(r"\bCC[ -]?(BY(?:[ -](?:SA|NC|ND))*)[ -]?(\d\.\d)\b", re.IGNORECASE)
_CC0_TEXT = re.compile(r"\bCC0\b|\bCC[ -]zero\b", re.IGNORECASE)
_ARR_TEXT = re.compile(r"all rights reserved", re.IGNORECASE)
_BY_PREFIX = re.compile(r"^(?:(?:photos?|images?|pictures?)\s+)?(?:by|:)\s+", re.IGNORECASE)
_CREDIT_TEXT = re.compile(
    r"\b(?:photos?|images?|pictures?)\s*(?:by|:)\s*([A-Z][\w.'-]+(?:\s+[A-Z][\w.'-]+){0,3})"
)


@dataclass(frozen=True)
class ImageRef:
    """One ``<img>`` on a page, with the text around it."""

    url: str
    alt_text: str | None  # None: no alt attribute; "": an empty one
    title_text: str | None
    figure_caption: str | None
    surrounding_text: str | None


@dataclass(frozen=True)
class PageInfo:
    title: str | None
    license: str  # an SPDX-ish id ("CC-BY-4.0"), "all-rights-reserved" or "unknown"
    license_url: str | None
    author: str | None
    images: list[ImageRef]  # http(s) images, fetchable
    refused_images: list[str]  # image URLs of any other scheme (file:, ftp:, data: ...): never fetched


def _clean(text: str | None) -> str | None:
    if text is None:
        return None
    return " ".join(text.split())


def _trim(text: str | None, limit: int = SURROUNDING_CHARS) -> str | None:
    text = _clean(text)
    if not text:
        return None
    return text if len(text) <= limit else text[: limit - 1].rsplit(" ", 1)[0] + "\u2026"


def licence_from_url(url: str) -> str | None:
    """Map a licence URL to an id: CC licences by path, else None (unrecognised)."""
    if m := _CC_URL.search(url):
        return f"CC-{m[1].upper()}-{m[2]}"
    if m := _CC0_URL.search(url):
        return f"CC0-{m[1]}"
    if _PDM_URL.search(url):
        return "public-domain"
    return None


def licence_from_text(text: str) -> str | None:
    """A licence named in prose: "CC BY-SA 4.0", "CC0", "All rights reserved"."""
    if m := _CC_TEXT.search(text):
        return f"CC-{re.sub(r'[ -]+', '-', m[1].upper())}-{m[2]}"
    if _CC0_TEXT.search(text):
        return "CC0-1.0"
    if _ARR_TEXT.search(text):
        return "all-rights-reserved"
    return None


def page_licence(sel: Selector, base_url: str) -> tuple[str, str | None]:
    """(licence id, licence URL): a ``rel=license`` link wins over text in the page."""
    href = sel.css('a[rel~="license"]::attr(href), link[rel~="license"]::attr(href)').get()
    if href:
        url = urljoin(base_url, href.strip())
        return licence_from_url(url) or "unknown", url
    text = " ".join(
        sel.xpath("//body//text()[not(ancestor::script) and not(ancestor::style)]").getall()
    )
    return licence_from_text(text) or "unknown", None


def page_author(sel: Selector) -> str | None:
    """Who the page credits: meta author, a rel/itemprop/class author element, or "Photos by X"."""
    for query in (
        'meta[name="author"]::attr(content)',
        'meta[property="article:author"]::attr(content)',
    ):
        if value := _clean(sel.css(query).get()):
            return value
    for query in ('[rel~="author"]', '[itemprop="author"]', ".author", ".byline"):
        node = sel.css(query)
        if node and (value := _clean(node[0].xpath("string()").get())):
            return _BY_PREFIX.sub("", value) or None
    text = _clean(" ".join(sel.css("footer ::text, .credit ::text").getall())) or ""
    if m := _CREDIT_TEXT.search(text):
        return m[1]
    return None


def _surrounding(img: Selector) -> str | None:
    """The paragraph holding the image, else the paragraphs just before and after its block."""
    inside = img.xpath("ancestor::p[1]")
    if inside:
        return _trim(inside[0].xpath("string()").get())
    block = img.xpath("ancestor::figure[1]") or [img]
    before = block[0].xpath("preceding-sibling::p[1]")
    after = block[0].xpath("following-sibling::p[1]")
    parts = [p.xpath("string()").get() or "" for p in (*before[:1], *after[:1])]
    return _trim(" ".join(parts))


def _image_url(img: Selector, base_url: str) -> str | None:
    """The image's URL: ``src``, or ``data-src`` when ``src`` is not http(s) (a lazy-loading
    placeholder); None when neither names a resource."""
    urls = [
        urldefrag(urljoin(base_url, v.strip()))[0]
        for v in (img.attrib.get("src"), img.attrib.get("data-src")) if v and v.strip()
    ]
    urls = [u for u in urls if is_resource_link(u)]
    return next((u for u in urls if scheme_refusal(u) is None), urls[0] if urls else None)


def page_images(sel: Selector, base_url: str) -> tuple[list[ImageRef], list[str]]:
    """Every ``<img>`` once per URL, in page order: (http(s) images, URLs of other schemes)."""
    refs: list[ImageRef] = []
    refused: list[str] = []
    seen: set[str] = set()
    for img in sel.css("img"):
        url = _image_url(img, base_url)
        if url is None or url in seen:
            continue
        seen.add(url)
        if scheme_refusal(url) is not None:
            refused.append(url)
            continue
        alt = img.attrib.get("alt")
        refs.append(
            ImageRef(
                url=url,
                alt_text=_clean(alt) if alt is not None else None,
                title_text=_clean(img.attrib.get("title")) or None,
                figure_caption=_clean(img.xpath("string(ancestor::figure[1]/figcaption)").get())
                or None,
                surrounding_text=_surrounding(img),
            )
        )
    return refs, refused


def refused_links(sel: Selector, base_url: str) -> list[str]:
    """The page's links (``<a>``/``<area>`` hrefs, the tags Scrapy's link extractor reads) whose
    scheme is not http(s): never followed, but recorded. Scrapy's extractor itself passes
    ``file:`` and ``ftp:`` links and drops ``data:`` silently, so it cannot be the judge."""
    out: list[str] = []
    for href in sel.xpath("//a/@href | //area/@href").getall():
        url = urldefrag(urljoin(base_url, href.strip()))[0]
        if url and is_resource_link(url) and scheme_refusal(url) is not None and url not in out:
            out.append(url)
    return out


def extract_page(sel: Selector, base_url: str) -> PageInfo:
    title = _clean(sel.css("title::text").get()) or _clean(sel.css("h1").xpath("string()").get())
    licence, licence_url = page_licence(sel, base_url)
    images, refused = page_images(sel, base_url)
    return PageInfo(
        title=title or None,
        license=licence,
        license_url=licence_url,
        author=page_author(sel),
        images=images,
        refused_images=refused,
    )
