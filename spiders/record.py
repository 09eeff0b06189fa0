"""The crawl's ledger: items, pages and rejections as they happen, written out once at the end.

Why one ledger: the spider (pages, rejections) and the item pipeline (stored images) both
report here, so the crawl directory is written by one object in one place, even when the
crawl stops early on a bound, and the progress line counts the same things the files hold.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa

from lora_factory.manifest import write_items, write_table

PAGE_SCHEMA = pa.schema(
    [
        pa.field("url", pa.string(), nullable=False),
        pa.field("status", pa.int32()),  # null when no response arrived
        pa.field("depth", pa.int32(), nullable=False),
        pa.field("title", pa.string()),
        pa.field("topic", pa.string()),
        pa.field("n_images", pa.int32(), nullable=False),
        pa.field("decision", pa.string(), nullable=False),  # "parsed" | "skipped" | "error"
        pa.field("reason", pa.string()),  # why not parsed: http_404, robots_txt, private_address...
    ]
)

REJECTED_SCHEMA = pa.schema(
    [
        pa.field("url", pa.string(), nullable=False),  # the image URL
        pa.field("page_url", pa.string()),
        pa.field("topic", pa.string()),
        pa.field("reason", pa.string(), nullable=False),  # too_small, not_image, undecodable...
        pa.field("detail", pa.string()),
    ]
)

PROGRESS_EVERY = 10  # image outcomes between progress lines


class CrawlRecord:
    """Collects what the crawl found; ``write`` produces the crawl directory's tables and stats."""

    def __init__(self, out_dir: Path, progress: Callable[[str], None] | None = None) -> None:
        self.out_dir = Path(out_dir)
        self.images_dir = self.out_dir / "images"
        self.items: dict[str, dict[str, Any]] = {}  # item_id -> row, in first-seen order
        self.pages: list[dict[str, Any]] = []
        self.rejections: list[dict[str, Any]] = []
        self.merged = 0  # image URLs folded into an existing item (same bytes)
        self.over_limit = 0  # decodable images dropped because max_images was reached
        self._progress = progress or (lambda line: None)
        self._outcomes = 0

    # -- reporting -------------------------------------------------------------------------
    def add_page(self, row: Mapping[str, Any]) -> None:
        self.pages.append(dict(row))
        self._emit()

    def add_item(self, row: Mapping[str, Any]) -> None:
        self.items[row["item_id"]] = dict(row)
        self._image_outcome()

    def merge(self, item_id: str, url: str) -> bool:
        """Fold ``url`` into the item with these bytes; False if no such item yet."""
        row = self.items.get(item_id)
        if row is None:
            return False
        if url != row["image_url"] and url not in row["other_urls"]:
            row["other_urls"].append(url)
        self.merged += 1
        self._image_outcome()
        return True

    def reject(
        self, url: str, page_url: str | None, topic: str | None, reason: str, detail: str
    ) -> None:
        self.rejections.append(
            {"url": url, "page_url": page_url, "topic": topic, "reason": reason, "detail": detail}
        )
        self._image_outcome()

    def progress_line(self) -> str:
        parsed = sum(1 for p in self.pages if p["decision"] == "parsed")
        return f"crawl: {parsed} pages, {len(self.items)} images, {len(self.rejections)} rejected"

    def _image_outcome(self) -> None:
        self._outcomes += 1
        if self._outcomes % PROGRESS_EVERY == 0:
            self._emit()

    def _emit(self) -> None:
        self._progress(self.progress_line())

    # -- output ----------------------------------------------------------------------------
    def summary(
        self, scrapy_stats: Mapping[str, Any], finish_reason: str, duration_s: float
    ) -> dict[str, Any]:
        pages_by_reason = Counter(p["reason"] for p in self.pages if p["decision"] != "parsed")
        return {
            "pages": sum(1 for p in self.pages if p["decision"] == "parsed"),
            "pages_requested": len(self.pages),
            "pages_not_parsed": dict(sorted(pages_by_reason.items())),
            "images": len(self.items),
            "image_urls": len(self.items) + self.merged,
            "byte_duplicates_merged": self.merged,
            "images_over_limit": self.over_limit,
            "image_bytes": sum(row["num_bytes"] for row in self.items.values()),
            "bytes": int(scrapy_stats.get("downloader/response_bytes", 0)),
            "requests": int(scrapy_stats.get("downloader/request_count", 0)),
            "rejected": len(self.rejections),
            "rejections": dict(sorted(Counter(r["reason"] for r in self.rejections).items())),
            "robots_forbidden": int(scrapy_stats.get("robotstxt/forbidden", 0)),
            "finish_reason": finish_reason,
            "scrapy_finish_reason": scrapy_stats.get("finish_reason"),
            "duration_s": round(duration_s, 3),
        }

    def write(self, summary: Mapping[str, Any]) -> dict[str, Any]:
        """Write items/pages/rejected parquet and crawl_stats.json; returns the stats."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.images_dir.mkdir(parents=True, exist_ok=True)
        write_items(self.out_dir / "items.parquet", list(self.items.values()))
        write_table(self.out_dir / "pages.parquet", self.pages, PAGE_SCHEMA)
        write_table(self.out_dir / "rejected.parquet", self.rejections, REJECTED_SCHEMA)
        stats = dict(summary)
        tmp = self.out_dir / "crawl_stats.json.tmp"
        tmp.write_text(
            json.dumps(stats, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8"
        )
        tmp.replace(self.out_dir / "crawl_stats.json")
        return stats
