"""The topic spider: pages from per-topic seeds, images with provenance, bounded, polite, resumable.

Why images go through Scrapy (not a side download): the scheduler, robots.txt, throttling,
the private-address guard and the crawl bounds then apply to every byte we fetch. The spider
decides what to follow and checks what it got (and stores the bytes that pass under their
content hash); which URL becomes an item is the pipeline's job (``spiders.pipelines``), outputs
and the resumption journal the ledger's (``spiders.record``).

Per page: HTML only; opt-outs (X-Robots-Tag and meta robots ``noai``/``noimageai`` skip the
page's images with reason ``noai``, ``nofollow`` stops link following); quality (``ad_farm``,
``low_entropy``, ``language``) and relevance (``off_topic``) checks; then images and links. A
page rejected for its quality is not mined (no images, no text) but its on-site links are still
followed within the depth and page bounds: a gallery index or a category listing is mostly
links, and is how a site leads to its pictures. An ``off_topic`` page leads nowhere (seeds are
never judged off topic). Only http(s) is requested: links and images of any other scheme
(``file:``, ``ftp:``, ``data:`` ...) are recorded with reason ``unsupported_scheme`` and never
become requests; the address guard (``spiders.middlewares``) refuses them again if one did.
Per image: Content-Type and opt-out headers are checked as soon as the headers arrive (the body
of an HTML page served at an image URL is never downloaded), the body's size is capped by
``download_maxsize``, and ``spiders.images`` checks magic bytes, pixels and decodes it; that
check, the content hash and the write to the image store run in a small thread pool
(``spiders.workpool``), so decoding a large image does not stall the downloads.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import scrapy
from parsel import Selector
from scrapy import signals
from scrapy.exceptions import StopDownload
from scrapy.http import HtmlResponse, Request, Response
from scrapy.http.headers import Headers
from scrapy.linkextractors import LinkExtractor
from scrapy.utils.response import get_base_url
from twisted.python.failure import Failure
from w3lib.url import canonicalize_url

from .bounds import LocalBounds, SharedBounds
from .extract import ImageRef, extract_page, refused_links
from .failures import failure_reason
from .guard import FETCH_SCHEMES, scheme_refusal, shown_url
from .images import ImageRejected, declared_type, type_is_acceptable
from .intake import check_and_store, image_item, listed_image_meta
from .meta import IMAGE_KEY, IMAGE_META, PAGE_KEY, PAGE_URL, STOP_META
from .optout import AI_OPT_OUTS, bot_token, image_opt_out, robots_directives
from .pipelines import close_spider_soon
from .quality import Relevance, link_text, page_quality, page_summary_text
from .record import CrawlRecord
from .spec import CrawlSpec
from .workpool import WorkPool

IMAGE_PRIORITY = 100  # a page's images are fetched before the crawl goes deeper
FRIENDLY_REASONS = {"closespider_timeout": "timeout", "shutdown": "interrupted"}
# The bounds in the order they are reported when several were hit.
BOUND_ORDER = ("max_images", "max_images_per_topic", "max_pages", "max_depth")


def seed_domains(topics_to_urls: dict[str, list[str]]) -> list[str]:
    """The seeds' host names (no ports: Scrapy's offsite check compares host names)."""
    return sorted(
        {urlsplit(u).hostname or "" for urls in topics_to_urls.values() for u in urls} - {""}
    )


def header_values(headers: Headers, name: bytes) -> list[str]:
    return [v.decode("latin-1") for v in headers.getlist(name)]


class TopicSpider(scrapy.Spider):
    name = "topics"

    def __init__(
        self, spec: CrawlSpec, progress: Callable[[str], None] | None = None, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.spec = spec
        # Images an API source found (provenance dicts with "image_url"): fetched directly.
        self.topics_to_images = spec.images
        self.topics_to_urls = {**{t: [] for t in spec.images}, **spec.topics}
        self.config = config = spec.crawl
        self.allowed_domains = [d.lower() for d in config.allowed_domains] or seed_domains(
            spec.topics
        )
        self.record = CrawlRecord(spec.out_dir, progress, spec.state_dir)
        # Not LinkExtractor(allow_domains=...): it compares the netloc (with the port), while
        # OffsiteMiddleware compares the host name; _on_site follows the offsite rule.
        self.links = LinkExtractor()
        self.bot = bot_token(config.user_agent)
        self.relevance: Relevance | None = None
        if config.relevance_threshold is not None:
            self.relevance = Relevance(
                config.relevance_model, Path(spec.models_dir or spec.out_dir / ".models")
            )
        self.bounds_hit: set[str] = set()  # bounds that stopped the crawl following something
        self.close_reason: str | None = None
        self._pages: set[str] = set()  # canonical URLs of every page requested
        self._refused: set[str] = set()  # links of another scheme, recorded (not requested)
        self._images: set[str] = set()  # every image URL requested (or refused)
        self.work = WorkPool()  # image decoding, hashing and storing, off the reactor thread
        # Shared by the run's workers in distributed mode (set in from_crawler).
        self.bounds: LocalBounds | SharedBounds = LocalBounds(config, self.record)

    @classmethod
    def from_crawler(cls, crawler: Any, *args: Any, **kwargs: Any) -> TopicSpider:
        spider = super().from_crawler(crawler, *args, **kwargs)
        crawler.signals.connect(spider.headers_received, signal=signals.headers_received)
        if spider.spec.frontier is not None:
            from .frontier import shared_bounds

            spider.bounds = shared_bounds(crawler.settings, spider.config)
        return spider

    # -- start and resume ------------------------------------------------------------------
    async def start(self) -> AsyncIterator[Request]:
        self.record.live_stats = self.crawler.stats.get_stats
        state = self.record.open_journal()
        self._pages.update(state.pages)
        self._refused.update(k for k in state.pages_done if k not in state.pages)
        self._images.update(state.images)
        self._images.update(state.images_done)
        if self.record.resumed:
            self.logger.info(
                "resuming: %d pages and %d images already done, %d pages and %d images pending",
                len(state.pages_done), len(state.images_done),
                len(state.pending_pages), len(state.pending_images),
            )
        if self.check_image_bounds():
            return
        for url, meta in state.pending_images:
            yield self._image_request(url, meta)
        for req in state.pending_pages:
            yield self._make_page_request(req["url"], req["topic"], req["depth"])
        for topic, urls in self.topics_to_urls.items():
            for url in urls:
                if request := self._page_request(url, topic, 0):
                    yield request
        for request in self._direct_image_requests():
            yield request

    def _direct_image_requests(self) -> Iterator[Request]:
        """Requests for images an API source found, with their provenance (not yet requested)."""
        for topic, candidates in self.topics_to_images.items():
            for candidate in candidates:
                url = candidate["image_url"]
                if url in self._images or shown_url(url) in self._images:
                    continue
                meta = listed_image_meta(candidate, topic, self.config)
                if self._refuse_image(url, meta):
                    continue
                self._images.add(url)
                self.record.requested_image(url, meta)
                yield self._image_request(url, meta)

    # -- pages -----------------------------------------------------------------------------
    def _page_request(self, url: str, topic: str, depth: int) -> Request | None:
        """A request for a page not yet requested, unless max_pages is used up."""
        key = canonicalize_url(url)
        if key in self._pages or not self._on_site(url):
            return None
        if not self.bounds.page_budget_left(len(self._pages)):
            self.bounds_hit.add("max_pages")
            self.crawler.stats.inc_value("lora_factory/pages_over_limit")
            return None
        self._pages.add(key)
        self.record.requested_page(key, url, topic, depth)
        return self._make_page_request(url, topic, depth)

    def _make_page_request(self, url: str, topic: str, depth: int) -> Request:
        return Request(
            url,
            callback=self.parse_page,
            errback=self.page_failed,
            dont_filter=True,  # deduplicated by the spider (and its journal) already
            meta={"topic": topic, "depth": depth, PAGE_KEY: canonicalize_url(url), PAGE_URL: url},
        )

    def _on_site(self, url: str) -> bool:
        """An http(s) URL on an allowed host (``file://<that host>/...`` is not on the site)."""
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        return parts.scheme.lower() in FETCH_SCHEMES and any(
            host == d or host.endswith("." + d) for d in self.allowed_domains
        )

    def parse_page(self, response: Response) -> Iterator[Request]:
        topic, depth = response.meta["topic"], response.meta.get("depth", 0)
        row: dict[str, Any] = {
            "url": response.url, "status": response.status, "depth": depth, "topic": topic,
            "n_images": 0,
        }
        key = response.meta.get(PAGE_KEY)
        if not isinstance(response, HtmlResponse):
            self._add_page(row, key, "skipped", "not_html", declared_type(
                response.headers.get(b"Content-Type", b"").decode("latin-1")))
            return
        sel = response.selector
        meta_robots = sel.xpath(
            "//meta[translate(@name, 'ABCDEFGHIJKLMNOPQRSTUVWXYZ', 'abcdefghijklmnopqrstuvwxyz')"
            "=$n or translate(@name, 'ABCDEFGHIJKLMNOPQRSTUVWXYZ', 'abcdefghijklmnopqrstuvwxyz')=$b]/@content",
            n="robots", b=self.bot,
        ).getall()
        directives = robots_directives(
            header_values(response.headers, b"X-Robots-Tag") + meta_robots, self.bot
        )
        rejection = self._judge_page(sel, topic, depth, row)
        if rejection is not None:
            self._add_page(row, key, "rejected", *rejection)
            if rejection[0] != "off_topic":  # a hub of links: not mined, but it leads on
                yield from self._follow_links(response, topic, depth, directives)
            return
        page = extract_page(sel, get_base_url(response))
        row["title"] = page.title
        row["n_images"] = len(page.images)
        found = directives & AI_OPT_OUTS if self.config.honour_noai else set()
        opted_out = ", ".join(sorted(found))
        if opted_out:
            self._add_page(row, key, "parsed", "noai", f"page opts out of AI use ({opted_out})")
        else:
            self._add_page(row, key, "parsed", None, None)
        provenance = {
            "page_url": response.url,
            "page_title": page.title,
            "topic": topic,
            "license": page.license,
            "license_url": page.license_url,
            "author": page.author,
            "robots": "allowed" if self.config.obey_robots else "not_checked",
        }
        for url in page.refused_images:
            if shown_url(url) not in self._images:
                self._refuse_image(url, provenance)
        yield from self._image_requests(page.images, provenance, opted_out, response.url)
        yield from self._follow_links(response, topic, depth, directives)

    def _judge_page(
        self, sel: Selector, topic: str, depth: int, row: dict[str, Any]
    ) -> tuple[str, str] | None:
        """Quality, then relevance: (reason, detail) when the page is not to be mined. Fills in
        ``row``'s measurements."""
        quality = page_quality(
            sel, self.config.allowed_languages, self.config.min_text_entropy,
            self.config.max_ad_ratio,
        )
        row.update(
            title=(sel.css("title::text").get() or "").strip() or None,
            language=quality.language, text_entropy=quality.entropy, ad_ratio=quality.ad_ratio,
        )
        if quality.reason:
            return quality.reason, quality.detail or quality.reason
        if self.relevance is None:
            return None
        score = self.relevance.scores(topic, [page_summary_text(sel)])[0]
        row["relevance"] = round(score, 4)
        threshold = self.config.relevance_threshold or 0.0
        if score < threshold and depth > 0:  # seeds are the user's choice: always mined
            return "off_topic", f"similarity {score:.2f} to {topic!r} < {threshold:g}"
        return None

    def _image_requests(
        self, images: list[ImageRef], provenance: dict[str, Any], opted_out: str, page_url: str
    ) -> Iterator[Request]:
        topic = provenance["topic"]
        topic_full = self._topic_full(topic)
        for ref in images:
            if ref.url in self._images:
                continue
            if opted_out:
                self._images.add(ref.url)
                self._reject(ref.url, provenance, "noai", f"page {page_url} opts out ({opted_out})")
                continue
            if topic_full or self._all_images_done():
                break
            meta = {
                **provenance,
                "alt_text": ref.alt_text,
                "title_text": ref.title_text,
                "figure_caption": ref.figure_caption,
                "surrounding_text": ref.surrounding_text,
            }
            self._images.add(ref.url)
            self.record.requested_image(ref.url, meta)
            yield self._image_request(ref.url, meta)

    def _follow_links(
        self, response: Response, topic: str, depth: int, directives: set[str]
    ) -> Iterator[Request]:
        """Requests for the page's on-site links, within the depth and page bounds; links of
        another scheme are recorded as refused."""
        if "nofollow" in directives or "none" in directives:
            return
        for url in refused_links(response.selector, get_base_url(response)):
            self._refuse_link(url, topic, depth + 1)
        links = [
            link for link in self.links.extract_links(response)
            if not link.nofollow and self._on_site(link.url)
            and canonicalize_url(link.url) not in self._pages
        ]
        if depth >= self.config.max_depth:
            if links:
                self.bounds_hit.add("max_depth")
            return
        if self.relevance is not None and links:
            scores = self.relevance.scores(topic, [link_text(lk.url, lk.text) for lk in links])
            kept = [lk for lk, s in zip(links, scores, strict=True)
                    if s >= (self.config.relevance_threshold or 0.0)]
            self.crawler.stats.inc_value("lora_factory/links_off_topic", len(links) - len(kept))
            links = kept
        for link in links:
            if request := self._page_request(link.url, topic, depth + 1):
                yield request

    def _refuse_link(self, url: str, topic: str, depth: int) -> None:
        """Record a link of a scheme the crawler never requests (once per URL)."""
        shown = shown_url(url)
        if shown in self._refused:
            return
        self._refused.add(shown)
        row = {"url": shown, "status": None, "depth": depth, "topic": topic, "n_images": 0}
        self._add_page(row, shown, "error", "unsupported_scheme", scheme_refusal(url))

    def _refuse_image(self, url: str, provenance: dict[str, Any]) -> bool:
        """Record an image URL of a scheme the crawler never requests; False if it is http(s)."""
        why = scheme_refusal(url)
        if why is None:
            return False
        shown = shown_url(url)
        self._images.add(shown)
        self._reject(shown, provenance, "unsupported_scheme", why)
        return True

    def page_failed(self, failure: Failure) -> None:
        request = failure.request  # type: ignore[attr-defined]
        reason, detail, status = failure_reason(failure)
        url = request.meta.get(PAGE_URL, request.url)
        if url != request.url:
            detail = f"{detail} (redirected to {request.url})"
        row = {
            "url": url, "status": status, "depth": request.meta.get("depth", 0),
            "topic": request.meta.get("topic"), "n_images": 0,
        }
        self._add_page(row, request.meta.get(PAGE_KEY), "error", reason, detail)

    def _add_page(
        self, row: dict[str, Any], key: str | None, decision: str, reason: str | None,
        detail: str | None,
    ) -> None:
        self.record.add_page({**row, "decision": decision, "reason": reason, "detail": detail}, key)

    # -- images ----------------------------------------------------------------------------
    def _image_request(self, url: str, provenance: dict[str, Any]) -> Request:
        return Request(
            url,
            callback=self.parse_image,
            errback=self.image_failed,
            priority=IMAGE_PRIORITY,
            # Deduplicated by the spider already; and the dupefilter would silently drop the
            # second hop of a redirect loop, leaving the image without a recorded outcome.
            dont_filter=True,
            meta={
                IMAGE_META: provenance,
                IMAGE_KEY: url,
                "allow_offsite": True,  # images often live on a CDN; the address guard applies
                "depth_reset": True,  # an image is not a page: DEPTH_LIMIT must not drop it
                "download_maxsize": self.config.max_image_bytes,
                "download_warnsize": self.config.warn_image_bytes,
            },
        )

    def headers_received(
        self, headers: Headers, body_length: int, request: Request, spider: Any
    ) -> None:
        """Stop an image download at its headers when its type or opt-out rules it out.

        ``fail=False``: the (bodiless) response still goes through the middlewares, so a 404
        stays ``http_404`` and a redirect is still followed (the signal does not see the status).
        """
        if IMAGE_META not in request.meta:
            return
        request.meta.pop(STOP_META, None)  # set by an earlier hop of a redirect chain
        content_type = (headers.get(b"Content-Type") or b"").decode("latin-1")
        if not type_is_acceptable(content_type):
            request.meta[STOP_META] = ("not_image", f"Content-Type {declared_type(content_type)}")
            raise StopDownload(fail=False)
        if self.config.honour_noai and (
            why := image_opt_out(header_values(headers, b"X-Robots-Tag"), self.bot)
        ):
            request.meta[STOP_META] = ("noai", why)
            raise StopDownload(fail=False)

    async def parse_image(self, response: Response) -> AsyncIterator[dict[str, Any]]:
        provenance = response.meta[IMAGE_META]
        url = response.meta.get(IMAGE_KEY, response.url)
        if STOP_META in response.meta:
            reason, detail = response.meta[STOP_META]
            self._reject(url, provenance, reason, detail)
            return
        content_type = response.headers.get(b"Content-Type", b"").decode("latin-1")
        try:
            stored = await self.work.run(
                check_and_store, response.body, content_type, self.config, self.record
            )
        except ImageRejected as rejected:
            self._reject(url, provenance, rejected.reason, rejected.detail)
            return
        yield image_item(url, provenance, stored)

    def image_failed(self, failure: Failure) -> None:
        request = failure.request  # type: ignore[attr-defined]
        reason, detail, _status = failure_reason(failure)
        url = request.meta.get(IMAGE_KEY, request.url)
        self._reject(url, request.meta.get(IMAGE_META, {}), reason, detail)

    def _reject(self, url: str, provenance: dict[str, Any], reason: str, detail: str) -> None:
        self.crawler.stats.inc_value(f"lora_factory/rejected/{reason}")
        self.record.reject(url, provenance.get("page_url"), provenance.get("topic"), reason, detail)

    # -- bounds ----------------------------------------------------------------------------
    def _all_images_done(self) -> bool:
        return self.bounds.images_full()

    def _topic_full(self, topic: str | None) -> bool:
        return self.bounds.topic_full(topic)

    def check_image_bounds(self) -> bool:
        """Close the spider when an image bound is reached; True if one is."""
        reason = None
        if self._all_images_done():
            reason = "max_images"
        elif self.config.max_images_per_topic and all(
            self._topic_full(t) for t in self.topics_to_urls
        ):
            reason = "max_images_per_topic"
        if reason is None:
            return False
        if reason not in self.bounds_hit:
            self.bounds_hit.add(reason)
            close_spider_soon(self.crawler, reason)
        return True

    # -- end -------------------------------------------------------------------------------
    def closed(self, reason: str) -> None:
        self.close_reason = reason
        self.work.close()

    def finish_reason(self) -> str:
        """Why the crawl stopped: finished, a bound (max_images, max_images_per_topic, max_pages,
        max_depth), timeout, interrupted, or Scrapy's own reason."""
        reason = self.close_reason or "unknown"
        if reason == "finished":
            return next((b for b in BOUND_ORDER if b in self.bounds_hit), "finished")
        return FRIENDLY_REASONS.get(reason, reason)
