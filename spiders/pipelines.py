"""Item pipeline: name each image by the sha256 of its (canonical) bytes, store it once, merge
byte copies, and enforce the image bounds.

Why a pipeline: storage and identity belong after the spider's checks. Why the bounds here and
not Scrapy's CLOSESPIDER_ITEMCOUNT: a resumed crawl starts with the items of its previous
attempt, which Scrapy's counter does not know about.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Self

from scrapy.exceptions import DropItem
from scrapy.utils.defer import deferred_from_coro

from lora_factory.manifest import item_id_for

from .images import EXT_BY_MIME

if TYPE_CHECKING:
    from scrapy.crawler import Crawler

    from .record import CrawlRecord

BODY_KEY = "_body"  # the spider hands the canonical bytes over under this key; never in a table


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
        config = spider.config
        body: bytes = item.pop(BODY_KEY)
        item_id = item_id_for(body)
        if self.record.merge(item_id, item["image_url"]):
            raise DropItem(f"same bytes as item {item_id[:12]}", log_level="DEBUG")
        topic = item.get("topic") or ""
        if len(self.record.items) >= config.max_images or (
            config.max_images_per_topic and self.record.per_topic[topic] >= config.max_images_per_topic
        ):
            self.record.drop_over_limit(item["image_url"])
            raise DropItem("max_images reached", log_level="DEBUG")
        rel_path = self.record.store_image(item_id, EXT_BY_MIME[item["mime_type"]], body)
        row = {
            **item,
            "item_id": item_id,
            "image_path": rel_path,
            "num_bytes": len(body),
            "other_urls": [],
        }
        self.record.add_item(row)
        spider.check_image_bounds()
        return row


def close_spider_soon(crawler: Crawler, reason: str) -> None:
    """Ask the engine to close the spider gracefully (in-flight requests finish first)."""
    assert crawler.engine is not None
    deferred_from_coro(crawler.engine.close_spider_async(reason=reason))
