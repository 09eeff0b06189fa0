"""Crawl-like items straight from the demo site's files (no Scrapy), for fast curate tests."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from PIL import Image

from lora_factory.manifest import item_id_for, write_items
from spiders.sources.demo_site import DemoSite

BASE = "http://127.0.0.1:8000"


def demo_items(site: DemoSite, crawl_dir: Path) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """(items, truth by item_id) as the crawl would write them: one item per distinct byte string
    (a mirror copy becomes ``other_urls``), images under ``crawl_dir/images``, the page's topic
    (pages outside a topic folder get the topic whose page links to them, as the crawl does)."""
    images = crawl_dir / "images"
    images.mkdir(parents=True, exist_ok=True)
    items: dict[str, dict[str, Any]] = {}
    truth: dict[str, dict[str, Any]] = {}
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    for n, (path, t) in enumerate(sorted(site.ground_truth.items())):
        data = (site.root / path.lstrip("/")).read_bytes()
        iid = item_id_for(data)
        if iid in items:
            items[iid]["other_urls"].append(BASE + path)
            continue
        try:
            with Image.open(io.BytesIO(data)) as im:
                w, h = im.size
        except OSError:
            w, h = t["width"] or 0, t["height"] or 0
        ext = path.rsplit(".", 1)[-1]
        (images / f"{iid}.{ext}").write_bytes(data)
        folder = t["page"].split("/")[1]
        topic = folder if folder in site.topics else "lighthouse"
        items[iid] = {
            "item_id": iid, "image_path": f"images/{iid}.{ext}", "image_url": BASE + path,
            "page_url": BASE + t["page"], "alt_text": t["alt"] or None, "topic": topic,
            "license": t["license"], "author": t["author"], "crawl_time": t0 + timedelta(seconds=n),
            "width": w, "height": h, "num_bytes": len(data), "mime_type": f"image/{ext}", "other_urls": [],
        }
        truth[iid] = {**t, "path": path}
    rows = list(items.values())
    write_items(crawl_dir / "items.parquet", rows)
    return rows, truth
