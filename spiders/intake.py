"""What becomes of a listed or downloaded image: its provenance, its check and store, its item.

Why shared: the topic spider (Scrapy) and the url-list downloader (``spiders.urlcrawl``) must
validate, hash, store and count images identically, so a url-list crawl's items.parquet and
crawl_stats.json are the same whichever path fetched the bytes.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from lora_factory.config import CrawlConfig
from lora_factory.manifest import item_id_for

from .images import ImageRejected, inspect_image

if TYPE_CHECKING:
    from .bounds import LocalBounds, SharedBounds
    from .record import CrawlRecord

MERGED = "merged"  # same bytes as an item already kept
OVER_LIMIT = "over_limit"  # a max_images bound was reached


def listed_image_meta(candidate: dict[str, Any], topic: str, config: CrawlConfig) -> dict[str, Any]:
    """The provenance of an image a source listed (API result, url list), as journaled."""
    meta = {
        **{k: v for k, v in candidate.items() if k != "image_url"},
        "topic": topic,
        "robots": "allowed" if config.obey_robots else "not_checked",
    }
    meta.setdefault("license", "unknown")
    return meta


def check_and_store(body: bytes, content_type: str, config: CrawlConfig, record: CrawlRecord) -> dict[str, Any]:
    """In a work-pool thread: validate and decode, name by content hash, write to the store.

    Only the content-addressed store is touched here (idempotent and thread-safe); which URL
    becomes the item is decided by ``admit`` on the event-loop thread. Raises ``ImageRejected``.
    """
    info = inspect_image(body, content_type, config.max_image_pixels)
    side = config.min_image_side
    if min(info.width, info.height) < side:
        raise ImageRejected("too_small", f"{info.width}x{info.height} px < min_image_side {side}")
    item_id = item_id_for(info.data)
    return {
        "width": info.width,
        "height": info.height,
        "mime_type": info.mime_type,
        "item_id": item_id,
        "image_path": record.store_image(item_id, info.ext, info.data),
        "num_bytes": len(info.data),
    }


def image_item(url: str, provenance: dict[str, Any], stored: dict[str, Any]) -> dict[str, Any]:
    return {**provenance, "image_url": url, "crawl_time": datetime.now(UTC), **stored}


def admit(record: CrawlRecord, bounds: LocalBounds | SharedBounds, item: dict[str, Any]) -> dict[str, Any] | str:
    """Keep ``item`` as the image's row, or fold it into the item with its bytes (``MERGED``),
    or drop it past a bound (``OVER_LIMIT``). On one thread only: decisions stay race-free."""
    if record.merge(item["item_id"], item["image_url"]):
        return MERGED
    if not bounds.reserve_image(item.get("topic")):
        record.drop_over_limit(item["image_url"])
        return OVER_LIMIT
    row = {**item, "other_urls": []}
    record.add_item(row)
    return row
