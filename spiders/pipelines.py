"""Item pipeline: name each image by the sha256 of its bytes, store it once, merge byte copies.

Why a pipeline: storage and identity belong after the spider's checks, and later filters
(relevance, page quality, noai) slot in as further pipelines without touching the spider.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Self

from scrapy.exceptions import DropItem

from lora_factory.manifest import item_id_for

from .images import EXT_BY_MIME

if TYPE_CHECKING:
    from scrapy.crawler import Crawler

    from .record import CrawlRecord

BODY_KEY = "_body"  # the spider hands the raw bytes over under this key; never stored in a table


class ContentStorePipeline:
    def __init__(self, crawler: Crawler, max_images: int) -> None:
        self.crawler = crawler
        self.max_images = max_images

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        return cls(crawler, crawler.settings.getint("CLOSESPIDER_ITEMCOUNT"))

    @property
    def record(self) -> CrawlRecord:
        return self.crawler.spider.record  # type: ignore[union-attr]

    def process_item(self, item: dict[str, Any]) -> dict[str, Any]:
        body: bytes = item.pop(BODY_KEY)
        item_id = item_id_for(body)
        if self.record.merge(item_id, item["image_url"]):
            raise DropItem(f"same bytes as item {item_id[:12]}", log_level="DEBUG")
        if self.max_images and len(self.record.items) >= self.max_images:
            self.record.over_limit += 1
            raise DropItem("max_images reached", log_level="DEBUG")
        rel_path = f"images/{item_id}.{EXT_BY_MIME[item['mime_type']]}"
        target = self.record.out_dir / rel_path
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(target.name + ".part")
            tmp.write_bytes(body)
            tmp.replace(target)
        row = {
            **item,
            "item_id": item_id,
            "image_path": rel_path,
            "num_bytes": len(body),
            "other_urls": [],
        }
        self.record.add_item(row)
        return row
