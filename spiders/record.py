"""The crawl's ledger: items, pages and rejections as they happen, journaled for resumption,
and written out as the crawl directory at the end.

Why one ledger: the spider (pages, rejections) and the item pipeline (stored images) both
report here, so the crawl directory is written by one object in one place, even when the
crawl stops early on a bound, and the progress line counts the same things the files hold.

Why a journal (``<state_dir>/journal.jsonl``) instead of Scrapy's JOBDIR: JOBDIR's disk queues
are only consistent after a graceful shutdown, while the crawl stage must also continue after a
killed process. Every request the spider decides to make and every outcome is one JSON line,
flushed as it happens; a re-run replays it: outcomes are restored, requested-but-unfinished
pages and images are requested again, and an image URL with an outcome is never fetched again.
A line torn by a kill is ended (or cut off) before the next attempt appends, so no later event is lost
with it. Each attempt is a session in the journal; its request and byte counts are journaled
now and then (``counters``), so the stats of a resumed crawl are the whole run's.
Stored images live in ``<state_dir>/images`` (content-addressed, written atomically) and are
hard-linked into the output directory at the end.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from lora_factory.catalog import CRAWL_IMAGES, CRAWL_ITEMS, CRAWL_PAGES, CRAWL_REJECTED, CRAWL_STATS
from lora_factory.schemas import PAGE_SCHEMA

PROGRESS_EVERY = 10  # image outcomes between progress lines
JOURNAL_NAME = "journal.jsonl"
STATS_NAME = CRAWL_STATS.path
IMAGE_STORE = "images"  # in the state folder: the content-addressed store the outputs link to
COUNTERS_EVERY_S = 1.0  # how often a session's counts are journaled (a kill loses at most this)
# Counts Scrapy keeps per process (session) that the stats report for the whole run.
SESSION_COUNTS = {
    "requests": "downloader/request_count",
    "bytes": "downloader/response_bytes",
    "robots_forbidden": "robotstxt/forbidden",
    "links_off_topic": "lora_factory/links_off_topic",
}


def session_counts(scrapy_stats: Mapping[str, Any]) -> dict[str, int]:
    return {name: int(scrapy_stats.get(key, 0)) for name, key in SESSION_COUNTS.items()}


def repair_torn_tail(path: Path) -> int:
    """End the journal on a newline before appending: a last line a killed process left without
    its newline is completed if it is a whole event, else cut off. Returns the bytes cut."""
    with open(path, "rb+") as f:
        size = pos = f.seek(0, os.SEEK_END)
        end = 0
        while pos > 0:
            start = max(0, pos - 4096)
            f.seek(start)
            cut = f.read(pos - start).rfind(b"\n")
            if cut >= 0:
                end = start + cut + 1
                break
            pos = start
        if end == size:
            return 0
        f.seek(end)
        try:
            json.loads(f.read())
        except ValueError:
            f.truncate(end)
            return size - end
        f.write(b"\n")
        return 0


def link_image(source: Path, target: Path) -> None:
    """Hard-link a stored image into an output folder (copy across file systems)."""
    if target.exists():
        return
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def write_stats(out_dir: Path, stats: Mapping[str, Any]) -> dict[str, Any]:
    """Write ``crawl_stats.json`` atomically; returns the stats as written."""
    tmp = out_dir / f"{STATS_NAME}.tmp"
    tmp.write_text(json.dumps(stats, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")
    tmp.replace(out_dir / STATS_NAME)
    return dict(stats)


@dataclass
class ResumeState:
    """What a previous attempt left: requests made and which of them have an outcome."""

    pages: dict[str, dict[str, Any]] = field(default_factory=dict)  # key -> {url, topic, depth}
    pages_done: set[str] = field(default_factory=set)
    images: dict[str, dict[str, Any]] = field(default_factory=dict)  # url -> provenance
    images_done: set[str] = field(default_factory=set)
    events: int = 0
    sessions: int = 0  # attempts the journal has seen
    counts: dict[int, dict[str, int]] = field(default_factory=dict)  # session -> its last counts

    def prior_counts(self) -> Counter[str]:
        """The counts of every earlier session, added up."""
        total: Counter[str] = Counter()
        for counts in self.counts.values():
            total.update(counts)
        return total

    @property
    def pending_pages(self) -> list[dict[str, Any]]:
        return [p for k, p in self.pages.items() if k not in self.pages_done]

    @property
    def pending_images(self) -> list[tuple[str, dict[str, Any]]]:
        return [(u, m) for u, m in self.images.items() if u not in self.images_done]


class CrawlRecord:
    """Collects what the crawl found; ``write`` produces the crawl directory's tables and stats."""

    def __init__(
        self,
        out_dir: Path,
        progress: Callable[[str], None] | None = None,
        state_dir: Path | None = None,
    ) -> None:
        self.out_dir = Path(out_dir)
        self.state_dir = Path(state_dir) if state_dir is not None else self.out_dir / ".state"
        self.store_dir = self.state_dir / IMAGE_STORE
        self.items: dict[str, dict[str, Any]] = {}  # item_id -> row, in first-seen order
        self.pages: list[dict[str, Any]] = []
        self.pages_parsed = 0  # counted as they come: the progress line is written very often
        self.rejections: list[dict[str, Any]] = []
        self.merged = 0  # image URLs folded into an existing item (same bytes)
        self.over_limit = 0  # decodable images dropped because a max_images bound was reached
        self.per_topic: Counter[str] = Counter()
        self._progress = progress or (lambda line: None)
        self._outcomes = 0
        self._journal: IO[str] | None = None
        self.resumed: ResumeState | None = None
        self.session = 1
        self._prior: Counter[str] = Counter()  # earlier sessions' counts
        # This session's Scrapy stats (set by the spider); journaled as ``counters``.
        self.live_stats: Callable[[], Mapping[str, Any]] | None = None
        self._counted_at = 0.0
        self._last_counts: dict[str, int] = {}

    # -- journal ---------------------------------------------------------------------------
    def open_journal(self) -> ResumeState:
        """Replay the journal of a previous attempt (if any) and open it for appending."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.store_dir.mkdir(parents=True, exist_ok=True)
        path = self.state_dir / JOURNAL_NAME
        state = ResumeState()
        if path.exists():
            repair_torn_tail(path)
            with open(path, encoding="utf-8") as f:
                for line in f:
                    try:
                        event = json.loads(line)
                    except ValueError:
                        continue  # a line cut short by a killed process
                    self._replay(event, state)
                    state.events += 1
        self._journal = open(path, "a", encoding="utf-8")  # noqa: SIM115 (closed in close())
        if state.events:
            self.resumed = state
        self.session = state.sessions + 1
        self._prior = state.prior_counts()
        self._log({"e": "session", "n": self.session})
        return state

    def _replay(self, event: dict[str, Any], state: ResumeState) -> None:
        kind = event["e"]
        if kind == "req_page":
            state.pages.setdefault(event["key"], event["req"])
        elif kind == "req_image":
            state.images.setdefault(event["url"], event["meta"])
        elif kind == "page":
            state.pages_done.add(event["key"])
            self._count_page(event["row"])
        elif kind == "item":
            row = dict(event["row"])
            row["crawl_time"] = datetime.fromisoformat(row["crawl_time"])
            if (self.store_dir / Path(row["image_path"]).name).exists():
                self.items[row["item_id"]] = row
                self.per_topic[row["topic"] or ""] += 1
                state.images_done.add(row["image_url"])
        elif kind == "merge":
            if (row := self.items.get(event["item_id"])) is not None:
                row["other_urls"].append(event["url"])
                self.merged += 1
                state.images_done.add(event["url"])
        elif kind == "reject":
            self.rejections.append(event["row"])
            state.images_done.add(event["row"]["url"])
        elif kind == "over":
            self.over_limit += 1
            state.images_done.add(event["url"])
        elif kind == "session":
            state.sessions = max(state.sessions, int(event["n"]))
        elif kind == "counters":
            state.counts[int(event["n"])] = {k: int(v) for k, v in event["c"].items()}

    def _log(self, event: dict[str, Any]) -> None:
        if self._journal is not None:
            self._journal.write(json.dumps(event, default=str) + "\n")
            self._journal.flush()  # in the OS's hands: survives a killed process

    def requested_page(self, key: str, url: str, topic: str | None, depth: int) -> None:
        self._log({"e": "req_page", "key": key, "req": {"url": url, "topic": topic, "depth": depth}})

    def requested_image(self, url: str, meta: Mapping[str, Any]) -> None:
        self.requested_images([(url, meta)])

    def requested_images(self, requests: list[tuple[str, Mapping[str, Any]]]) -> None:
        """Journal many image requests in one write (a url list's thousands at the start)."""
        if self._journal is not None and requests:
            self._journal.write("".join(
                json.dumps({"e": "req_image", "url": url, "meta": dict(meta)}, default=str) + "\n"
                for url, meta in requests))
            self._journal.flush()

    def checkpoint(self, force: bool = False) -> None:
        """Journal this session's counts (at most every ``COUNTERS_EVERY_S``, or now)."""
        if self.live_stats is None or self._journal is None:
            return
        now = time.monotonic()
        if not force and now - self._counted_at < COUNTERS_EVERY_S:
            return
        self._counted_at = now
        counts = session_counts(self.live_stats())
        if counts != self._last_counts:
            self._last_counts = counts
            self._log({"e": "counters", "n": self.session, "c": counts})

    def close(self) -> None:
        self.checkpoint(force=True)
        if self._journal is not None:
            self._journal.close()
            self._journal = None

    # -- reporting -------------------------------------------------------------------------
    def add_page(self, row: Mapping[str, Any], key: str | None = None) -> None:
        full = {name: row.get(name) for name in PAGE_SCHEMA.names}
        self._count_page(full)
        self._log({"e": "page", "key": key or row["url"], "row": full})
        self._emit()

    def _count_page(self, row: dict[str, Any]) -> None:
        self.pages.append(row)
        self.pages_parsed += row["decision"] == "parsed"

    def store_image(self, item_id: str, ext: str, data: bytes) -> str:
        """Write the bytes into the content-addressed store (once); returns the relative path.

        Thread-safe (the spider stores from its work pool): each writer has its own temporary
        file, and the rename is atomic, so two copies of the same bytes simply both land.
        """
        name = f"{item_id}.{ext}"
        target = self.store_dir / name
        if not target.exists():
            tmp = target.with_name(f"{name}.{os.getpid()}.{threading.get_ident()}.part")
            tmp.write_bytes(data)
            tmp.replace(target)
        return f"images/{name}"

    def add_item(self, row: Mapping[str, Any]) -> None:
        self.items[row["item_id"]] = dict(row)
        self.per_topic[row.get("topic") or ""] += 1
        self._log({"e": "item", "row": dict(row)})
        self._image_outcome()

    def merge(self, item_id: str, url: str) -> bool:
        """Fold ``url`` into the item with these bytes; False if no such item yet."""
        row = self.items.get(item_id)
        if row is None:
            return False
        if url != row["image_url"] and url not in row["other_urls"]:
            row["other_urls"].append(url)
            self._log({"e": "merge", "item_id": item_id, "url": url})
        self.merged += 1
        self._image_outcome()
        return True

    def drop_over_limit(self, url: str) -> None:
        self.over_limit += 1
        self._log({"e": "over", "url": url})
        self._image_outcome()

    def reject(
        self, url: str, page_url: str | None, topic: str | None, reason: str, detail: str
    ) -> None:
        row = {"url": url, "page_url": page_url, "topic": topic, "reason": reason, "detail": detail}
        self.rejections.append(row)
        self._log({"e": "reject", "row": row})
        self._image_outcome()

    def progress_line(self) -> str:
        return f"crawl: {self.pages_parsed} pages, {len(self.items)} images, {len(self.rejections)} rejected"

    def _image_outcome(self) -> None:
        self._outcomes += 1
        if self._outcomes % PROGRESS_EVERY == 0:
            self._emit()

    def _emit(self) -> None:
        self.checkpoint()
        self._progress(self.progress_line())

    # -- output ----------------------------------------------------------------------------
    def summary(
        self, scrapy_stats: Mapping[str, Any], finish_reason: str, duration_s: float
    ) -> dict[str, Any]:
        pages_by_reason = Counter(
            p["reason"] for p in self.pages if p["decision"] not in ("parsed",)
        )
        totals = self._prior + Counter(session_counts(scrapy_stats))
        return {
            "pages": self.pages_parsed,
            "pages_requested": len(self.pages),
            "pages_not_parsed": dict(sorted(pages_by_reason.items())),
            "pages_noai": sum(1 for p in self.pages if p["reason"] == "noai"),
            "images": len(self.items),
            "images_per_topic": dict(sorted(self.per_topic.items())),
            "image_urls": len(self.items) + self.merged,
            "byte_duplicates_merged": self.merged,
            "images_over_limit": self.over_limit,
            "image_bytes": sum(row["num_bytes"] for row in self.items.values()),
            # The run's totals: this session's Scrapy counts plus every earlier session's.
            **{name: int(totals[name]) for name in SESSION_COUNTS},
            "rejected": len(self.rejections),
            "rejections": dict(sorted(Counter(r["reason"] for r in self.rejections).items())),
            "resumed": self.resumed is not None,
            "sessions": self.session,
            "finish_reason": finish_reason,
            "scrapy_finish_reason": scrapy_stats.get("finish_reason"),
            "duration_s": round(duration_s, 3),
        }

    def write(self, summary: Mapping[str, Any]) -> dict[str, Any]:
        """Write items/pages/rejected parquet, link the images, write crawl_stats.json."""
        self.close()
        images_dir = CRAWL_IMAGES.at(self.out_dir)
        images_dir.mkdir(parents=True, exist_ok=True)
        for row in self.items.values():
            name = Path(row["image_path"]).name
            link_image(self.store_dir / name, images_dir / name)
        CRAWL_ITEMS.write(self.out_dir, list(self.items.values()))
        CRAWL_PAGES.write(self.out_dir, self.pages)
        CRAWL_REJECTED.write(self.out_dir, self.rejections)
        return write_stats(self.out_dir, summary)
