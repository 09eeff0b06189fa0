"""The topic spider: pages from per-topic seeds, images with provenance, bounded and polite.

Why images go through Scrapy (not a side download): the scheduler, robots.txt, throttling,
the private-address guard and the crawl bounds then apply to every byte we fetch. The spider
decides what to follow and checks what it got; storage and identity are the pipeline's job
(``spiders.pipelines``), outputs the ledger's (``spiders.record``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import scrapy
from scrapy.http import HtmlResponse, Request, Response
from scrapy.linkextractors import LinkExtractor
from scrapy.utils.response import get_base_url
from twisted.python.failure import Failure
from w3lib.url import canonicalize_url

from lora_factory.config import CrawlConfig

from .extract import extract_page
from .failures import failure_reason
from .images import ImageRejected, inspect_image
from .pipelines import BODY_KEY
from .record import CrawlRecord

IMAGE_PRIORITY = 100  # a page's images are fetched before the crawl goes deeper
IMAGE_META = "lora_factory_image"  # request.meta key carrying an image's provenance
FRIENDLY_REASONS = {"closespider_itemcount": "max_images", "closespider_timeout": "timeout"}


def seed_domains(topics_to_urls: dict[str, list[str]]) -> list[str]:
    """The seeds' host names (no ports: Scrapy's offsite check compares host names)."""
    return sorted(
        {urlsplit(u).hostname or "" for urls in topics_to_urls.values() for u in urls} - {""}
    )


class TopicSpider(scrapy.Spider):
    name = "topics"

    def __init__(
        self,
        topics_to_urls: dict[str, list[str]],
        config: CrawlConfig,
        out_dir: str | Path,
        progress: Callable[[str], None] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.topics_to_urls = topics_to_urls
        self.config = config
        self.allowed_domains = [d.lower() for d in config.allowed_domains] or seed_domains(
            topics_to_urls
        )
        self.record = CrawlRecord(Path(out_dir), progress)
        # Not LinkExtractor(allow_domains=...): it compares the netloc (with the port), while
        # OffsiteMiddleware compares the host name; _on_site follows the offsite rule.
        self.links = LinkExtractor()
        self.bound_reached: str | None = None  # a bound that stopped the crawl following links
        self.close_reason: str | None = None
        self._pages: set[str] = set()  # canonical URLs of every page requested
        self._images: set[str] = set()

    # -- pages -----------------------------------------------------------------------------
    async def start(self) -> AsyncIterator[Request]:
        for topic, urls in self.topics_to_urls.items():
            for url in urls:
                if request := self._page_request(url, topic):
                    yield request

    def _page_request(self, url: str, topic: str) -> Request | None:
        """A request for a page not yet requested, unless max_pages is used up."""
        key = canonicalize_url(url)
        if key in self._pages or not self._on_site(url):
            return None
        if len(self._pages) >= self.config.max_pages:
            self.bound_reached = "max_pages"
            self.crawler.stats.inc_value("lora_factory/pages_over_limit")
            return None
        self._pages.add(key)
        return Request(
            url, callback=self.parse_page, errback=self.page_failed, meta={"topic": topic}
        )

    def _on_site(self, url: str) -> bool:
        host = (urlsplit(url).hostname or "").lower()
        return any(host == d or host.endswith("." + d) for d in self.allowed_domains)

    def parse_page(self, response: Response) -> Iterator[Request]:
        topic, depth = response.meta["topic"], response.meta.get("depth", 0)
        if not isinstance(response, HtmlResponse):
            self._add_page(
                response.url, response.status, depth, None, topic, 0, "skipped", "not_html"
            )
            return
        page = extract_page(response.selector, get_base_url(response))
        self._add_page(
            response.url,
            response.status,
            depth,
            page.title,
            topic,
            len(page.images),
            "parsed",
            None,
        )
        provenance = {
            "page_url": response.url,
            "page_title": page.title,
            "topic": topic,
            "license": page.license,
            "license_url": page.license_url,
            "author": page.author,
            "robots": "allowed" if self.config.obey_robots else "not_checked",
        }
        for ref in page.images:
            if ref.url in self._images:
                continue
            self._images.add(ref.url)
            meta = {
                IMAGE_META: {
                    **provenance,
                    "alt_text": ref.alt_text,
                    "title_text": ref.title_text,
                    "figure_caption": ref.figure_caption,
                    "surrounding_text": ref.surrounding_text,
                },
                "allow_offsite": True,  # images often live on a CDN; the address guard still applies
                "depth_reset": True,  # an image is not a page: DEPTH_LIMIT must not drop it
                "download_maxsize": self.config.max_image_bytes,
            }
            yield Request(
                ref.url,
                callback=self.parse_image,
                errback=self.image_failed,
                priority=IMAGE_PRIORITY,
                meta=meta,
            )
        if depth < self.config.max_depth:
            for link in self.links.extract_links(response):
                if not link.nofollow and (request := self._page_request(link.url, topic)):
                    yield request

    def page_failed(self, failure: Failure) -> None:
        request = failure.request  # type: ignore[attr-defined]
        reason, _detail, status = failure_reason(failure)
        self._add_page(
            request.url,
            status,
            request.meta.get("depth", 0),
            None,
            request.meta.get("topic"),
            0,
            "error",
            reason,
        )

    def _add_page(
        self,
        url: str,
        status: int | None,
        depth: int,
        title: str | None,
        topic: str | None,
        n_images: int,
        decision: str,
        reason: str | None,
    ) -> None:
        self.record.add_page(
            {
                "url": url,
                "status": status,
                "depth": depth,
                "title": title,
                "topic": topic,
                "n_images": n_images,
                "decision": decision,
                "reason": reason,
            }
        )

    # -- images ----------------------------------------------------------------------------
    def parse_image(self, response: Response) -> Iterator[dict[str, Any]]:
        provenance = response.meta[IMAGE_META]
        content_type = response.headers.get(b"Content-Type", b"").decode("latin-1")
        try:
            info = inspect_image(response.body, content_type)
        except ImageRejected as rejected:
            self._reject(response.url, provenance, rejected.reason, rejected.detail)
            return
        side = self.config.min_image_side
        if min(info.width, info.height) < side:
            self._reject(
                response.url,
                provenance,
                "too_small",
                f"{info.width}x{info.height} px < min_image_side {side}",
            )
            return
        yield {
            **provenance,
            "image_url": response.url,
            "crawl_time": datetime.now(UTC),
            "width": info.width,
            "height": info.height,
            "mime_type": info.mime_type,
            BODY_KEY: response.body,
        }

    def image_failed(self, failure: Failure) -> None:
        request = failure.request  # type: ignore[attr-defined]
        reason, detail, _status = failure_reason(failure)
        self._reject(request.url, request.meta.get(IMAGE_META, {}), reason, detail)

    def _reject(self, url: str, provenance: dict[str, Any], reason: str, detail: str) -> None:
        self.crawler.stats.inc_value(f"lora_factory/rejected/{reason}")
        self.record.reject(url, provenance.get("page_url"), provenance.get("topic"), reason, detail)

    # -- end -------------------------------------------------------------------------------
    def closed(self, reason: str) -> None:
        self.close_reason = reason

    def finish_reason(self) -> str:
        """Why the crawl stopped: finished, max_pages, max_images, timeout (or Scrapy's reason)."""
        reason = self.close_reason or "unknown"
        if reason == "finished" and self.bound_reached:
            return self.bound_reached
        return FRIENDLY_REASONS.get(reason, reason)
