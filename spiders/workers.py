"""Distributed crawl, the parent side: start N named crawler processes of one run on the shared
Redis frontier, wait for them, and merge their parts into the crawl stage's outputs.

Selected by ``CrawlConfig.redis_url`` (any number of workers, one included). Each worker is a
``run_crawl`` subprocess with a ``Frontier`` in its spec, crawling into its own part,
``<out_dir>/parts/<worker>/`` (items/pages/rejected parquet, crawl_stats.json, images/; state in
``<state_dir>/<worker>``); ``merge_parts(out_dir)`` then produces the stage's ``items.parquet``,
``pages.parquet``, ``rejected.parquet``, ``crawl_stats.json`` and ``images/``, merging
byte-identical images found by different workers into one item (the others' URLs go to
``other_urls``). What runs inside each crawler process is ``spiders.frontier``; the key layout
is ``spiders.redis_keys``. A killed worker's part is only written when that worker is re-run
under the same name: its journal holds what it did before the kill.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import redis
from pydantic import ValidationError

from lora_factory.catalog import (
    CRAWL_CONFIG,
    CRAWL_IMAGES,
    CRAWL_ITEMS,
    CRAWL_PAGES,
    CRAWL_REJECTED,
)
from lora_factory.config import CrawlConfig
from lora_factory.errors import StageError
from lora_factory.services import check_redis

from .crawl import STATS_NAME, empty_crawl_error, run_crawl
from .record import link_image, write_stats
from .redis_keys import run_key
from .spec import Frontier

PARTS_DIR = "parts"
# Per-worker counts that add up to the run's (the rest is recomputed from the merged tables).
_SUMMED = (
    "pages", "pages_requested", "pages_noai", "image_urls", "byte_duplicates_merged",
    "images_over_limit", "bytes", "requests", "rejected", "robots_forbidden", "links_off_topic",
)


def default_run_id(out_dir: Path) -> str:
    """A run id for workers sharing one ``out_dir`` (the crawl stage's folder) on one file system."""
    return hashlib.sha1(str(Path(out_dir).resolve()).encode()).hexdigest()[:16]


def default_worker() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def part_dir(out_dir: Path, worker: str) -> Path:
    return Path(out_dir) / PARTS_DIR / worker


def run_worker(
    topics_to_urls: dict[str, list[str]],
    out_dir: Path,
    config: CrawlConfig,
    worker: str,
    run_id: str | None = None,
    on_progress: Callable[[str], None] | None = None,
    state_dir: Path | None = None,
    models_dir: Path | None = None,
    topics_to_images: dict[str, list[dict[str, Any]]] | None = None,
) -> dict[str, Any]:
    """One crawler process of run ``run_id`` (default: derived from ``out_dir``), named ``worker``
    (so a re-run resumes its part): crawls into ``<out_dir>/parts/<worker>``, state in
    ``<state_dir>/<worker>``. A worker may end with no images (the others did the work)."""
    run_id = run_id or default_run_id(out_dir)
    try:
        frontier = Frontier(run_id=run_id, worker=worker)
    except ValidationError:
        raise StageError(f"worker {worker!r} of run {run_id!r}: name them with letters, digits, "
                         "'-', '_' or '.'") from None
    state = Path(state_dir or Path(out_dir) / ".state") / worker
    return run_crawl(
        topics_to_urls, part_dir(out_dir, worker), config, on_progress=on_progress,
        state_dir=state, models_dir=models_dir, topics_to_images=topics_to_images,
        frontier=frontier, require_images=False,
    )


def run_workers(
    topics_to_urls: dict[str, list[str]],
    out_dir: Path,
    config: CrawlConfig,
    workers: int,
    run_id: str,
    on_progress: Callable[[str], None] | None = None,
    state_dir: Path | None = None,
    models_dir: Path | None = None,
    topics_to_images: dict[str, list[dict[str, Any]]] | None = None,
) -> dict[str, Any]:
    """Run ``workers`` crawler processes of one run on the shared frontier, then merge their parts.

    Each worker is named ``w<i>`` (so a re-run resumes its part); progress lines are prefixed
    with the worker's name. Raises the first worker's error, or ``StageError`` when the run
    found no images.
    """
    if not config.redis_url:
        raise StageError("distributed crawl without crawl.redis_url: set it or run one crawl")
    check_redis(config.redis_url)

    def one(i: int) -> dict[str, Any]:
        name = f"w{i}"
        progress = (lambda line: on_progress(f"[{name}] {line}")) if on_progress else None
        return run_worker(topics_to_urls, out_dir, config, name, run_id, on_progress=progress,
                          state_dir=state_dir, models_dir=models_dir,
                          topics_to_images=topics_to_images)

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="crawl-worker") as pool:
        futures = [pool.submit(one, i) for i in range(workers)]
        for future in futures:
            future.result()
    stats = merge_parts(out_dir)
    if not stats.get("images"):
        urls = [u for us in topics_to_urls.values() for u in us]
        urls += [c["image_url"] for cs in (topics_to_images or {}).values() for c in cs]
        raise empty_crawl_error(urls, stats)
    return stats


def delete_run_keys(config: CrawlConfig, run_id: str) -> int:
    """Delete every Redis key of a run (e.g. to restart a crawl from scratch)."""
    server = redis.Redis.from_url(config.redis_url or "redis://127.0.0.1:6379")
    keys = list(server.scan_iter(f"{run_key(config, run_id)}:*"))
    return server.delete(*keys) if keys else 0


# -- merge -------------------------------------------------------------------------------------
def part_dirs(out_dir: Path) -> list[Path]:
    root = Path(out_dir) / PARTS_DIR
    return sorted(p for p in root.iterdir() if (p / STATS_NAME).exists()) if root.exists() else []


def _merge_items(parts: list[Path], images_dir: Path) -> tuple[dict[str, dict[str, Any]], int]:
    """Items by content hash, the earliest crawled copy kept; returns (items, copies folded)."""
    items: dict[str, dict[str, Any]] = {}
    cross_merged = 0
    all_items = [
        (row["crawl_time"], part, row) for part in parts for row in CRAWL_ITEMS.read(part).to_pylist()
    ]
    for _, part, row in sorted(all_items, key=lambda t: (t[0], t[1].name)):
        kept = items.get(row["item_id"])
        if kept is None:
            row["other_urls"] = list(row.get("other_urls") or [])
            items[row["item_id"]] = row
            name = Path(row["image_path"]).name
            link_image(CRAWL_IMAGES.at(part) / name, images_dir / name)
            continue
        cross_merged += 1
        for url in [row["image_url"], *(row.get("other_urls") or [])]:
            if url != kept["image_url"] and url not in kept["other_urls"]:
                kept["other_urls"].append(url)
    return items, cross_merged


def merge_parts(out_dir: Path) -> dict[str, Any]:
    """Merge ``<out_dir>/parts/*`` into the stage's items/pages/rejected/crawl_stats/images.

    Items are merged by content hash across workers: the earliest crawled copy is kept and the
    other copies' URLs are added to its ``other_urls``. Returns the merged stats, which also list
    each worker's own stats under ``workers``.
    """
    out_dir = Path(out_dir)
    parts = part_dirs(out_dir)
    if not parts:
        raise StageError(f"no finished worker parts under {out_dir / PARTS_DIR}: re-run the crawl")
    images_dir = CRAWL_IMAGES.at(out_dir)
    images_dir.mkdir(parents=True, exist_ok=True)
    items, cross_merged = _merge_items(parts, images_dir)
    pages: dict[str, dict[str, Any]] = {}
    rejected: list[dict[str, Any]] = []
    for part in parts:
        for row in CRAWL_PAGES.read(part).to_pylist():
            pages.setdefault(row["url"], row)
        rejected.extend(CRAWL_REJECTED.read(part).to_pylist())
    # Every worker ran the same spec but for its name; the first one's (redacted) copy stands for the run.
    shutil.copyfile(CRAWL_CONFIG.at(parts[0]), CRAWL_CONFIG.at(out_dir))
    CRAWL_ITEMS.write(out_dir, list(items.values()))
    CRAWL_PAGES.write(out_dir, list(pages.values()))
    CRAWL_REJECTED.write(out_dir, rejected)
    worker_stats = {p.name: json.loads((p / STATS_NAME).read_text(encoding="utf-8")) for p in parts}
    return write_stats(out_dir, _merged_stats(worker_stats, items, cross_merged))


def _merged_stats(
    worker_stats: dict[str, dict[str, Any]], items: dict[str, dict[str, Any]], cross_merged: int
) -> dict[str, Any]:
    stats: dict[str, Any] = {k: sum(int(s.get(k, 0)) for s in worker_stats.values()) for k in _SUMMED}
    not_parsed: Counter[str] = Counter()
    rejections: Counter[str] = Counter()
    for s in worker_stats.values():
        not_parsed.update(s.get("pages_not_parsed") or {})
        rejections.update(s.get("rejections") or {})
    per_topic = Counter(row.get("topic") or "" for row in items.values())
    reasons = {s.get("finish_reason") for s in worker_stats.values()}
    stats.update(
        images=len(items),
        images_per_topic=dict(sorted(per_topic.items())),
        image_bytes=sum(int(row["num_bytes"]) for row in items.values()),
        byte_duplicates_merged=stats["byte_duplicates_merged"] + cross_merged,
        byte_duplicates_across_workers=cross_merged,
        pages_not_parsed=dict(sorted(not_parsed.items())),
        rejections=dict(sorted(rejections.items())),
        resumed=any(s.get("resumed") for s in worker_stats.values()),
        finish_reason=reasons.pop() if len(reasons) == 1 else "mixed",
        duration_s=max(float(s.get("duration_s", 0)) for s in worker_stats.values()),
        workers=worker_stats,
    )
    return stats
