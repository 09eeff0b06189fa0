"""A dataset folder as crawl items: ``lora-factory run --dataset PATH`` starts the factory from it.

Why through the crawl stage's outputs: curate, label and the rest then run unchanged, and every
item keeps its provenance as a crawled one does: the file it came from (``image_url`` is a
``file:`` URI, or ``zip:<archive>!/<entry>``), its content hash (``item_id``), its sidecar caption
as the page text (``alt_text`` and ``surrounding_text``, where label looks for captions) and its
licence (``crawl.dataset_license``, else the first line of a ``licence.txt``/``license.txt`` in
the folder, else ``unknown``).
"""

from __future__ import annotations

import hashlib
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from PIL import Image

from .features import DECODE_ERRORS
from .readers import Dataset, Sample

LICENCE_FILES = ("licence.txt", "license.txt", "LICENSE.txt", "LICENCE.txt", "LICENSE", "LICENCE")


def folder_licence(root: Path, configured: str | None) -> str:
    if configured:
        return configured
    for name in LICENCE_FILES:
        if (root / name).is_file():
            first = (root / name).read_text(encoding="utf-8", errors="replace").strip().splitlines()
            if first and first[0].strip():
                return first[0].strip()
    return "unknown"


def source_uri(ds: Dataset, s: Sample) -> str:
    """Where the file came from, as the user would find it again."""
    if ds.source.lower().endswith(".zip") and Path(ds.source).is_file():
        return f"zip:{Path(ds.source).resolve().as_uri()}!/{s.rel}"
    return s.path.resolve().as_uri()


def crawl_items(ds: Dataset, out: Path, images_dir: str, topic: str, licence: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(items, rejected): every decodable image copied to ``out/images_dir/<sha256>.<ext>`` once
    (the same bytes under another name go to ``other_urls``), the rest rejected with the reason."""
    now = datetime.now(UTC)
    items: dict[str, dict[str, Any]] = {}
    rejected = [{"url": (ds.root / j).resolve().as_uri(), "page_url": None, "topic": topic, "reason": "junk",
                 "detail": "archiver or desktop metadata"} for j in ds.junk]
    for s in ds.samples:
        url = source_uri(ds, s)
        data = s.path.read_bytes()
        sha = hashlib.sha256(data).hexdigest()
        if sha in items:
            items[sha]["other_urls"].append(url)
            continue
        try:
            with Image.open(s.path) as im:
                width, height, mime = im.width, im.height, Image.MIME.get(im.format or "", "application/octet-stream")
                im.verify()
        except DECODE_ERRORS as e:
            rejected.append({"url": url, "page_url": None, "topic": topic, "reason": "undecodable", "detail": str(e)[:300]})
            continue
        rel = f"{images_dir}/{sha}{s.path.suffix.lower()}"
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(s.path, out / rel)
        items[sha] = {
            "item_id": sha, "image_path": rel, "image_url": url, "page_url": url, "page_title": s.rel,
            "alt_text": s.caption, "title_text": None, "figure_caption": None, "surrounding_text": s.caption,
            "topic": topic, "license": licence, "license_url": None, "author": None, "robots": "local file",
            "crawl_time": now, "width": width, "height": height, "num_bytes": len(data), "mime_type": mime,
            "other_urls": [],
        }
    return list(items.values()), rejected
