"""Item pipeline: one item per distinct image (byte copies are merged into it), within the image
bounds.

Why a pipeline: the spider's checks run concurrently (in a thread pool, see
``spiders.workpool``) and may finish in any order; deciding here, on the reactor thread, which
URL is the item and which is a byte copy or over a bound keeps those decisions race-free. The
spider has already named the image by the sha256 of its canonical bytes and written it to the
content-addressed store (idempotent: a copy lands on the same file).
Why the bounds here and not Scrapy's CLOSESPIDER_ITEMCOUNT: a resumed crawl starts with the
items of its previous attempt, which Scrapy's counter does not know about, and in distributed
mode the bounds are the whole run's (``spiders.bounds``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Self

from scrapy.exceptions import DropItem
from scrapy.utils.defer import deferred_from_coro

from .intake import MERGED, OVER_LIMIT, admit

if TYPE_CHECKING:
    from scrapy.crawler import Crawler

    from .record import CrawlRecord


class ContentStorePipeline:
    def __init__(self, crawler: Crawler) -> None:
        self.crawler = crawler

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        return cls(crawler)

    @property
    def record(self) -> CrawlRecord:
        return self.crawler.spider.record  # type: ignore[union-attr]

    def process_item(self, item: dict[str, Any]) -> dict[str, Any]:
        spider: Any = self.crawler.spider
        row = admit(self.record, spider.bounds, item)
        if row == MERGED:
            raise DropItem(f"same bytes as item {item['item_id'][:12]}", log_level="DEBUG")
        spider.check_image_bounds()  # another worker may have used up a shared bound
        if row == OVER_LIMIT:
            raise DropItem("max_images reached", log_level="DEBUG")
        assert isinstance(row, dict)
        return row


def close_spider_soon(crawler: Crawler, reason: str) -> None:
    """Ask the engine to close the spider gracefully (in-flight requests finish first)."""
    assert crawler.engine is not None
    deferred_from_coro(crawler.engine.close_spider_async(reason=reason))
