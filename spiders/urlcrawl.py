"""``crawl.source: urls`` without Scrapy: the listed images fetched by ``spiders.urlfetch``.

Why: a url list has no page to parse or link to follow, so the crawl is a bounded pool of
downloads; Scrapy's per-request machinery cost more CPU than the downloads themselves (README
"Crawl"). Everything else is the crawl's own code: the ledger and its resumable journal
(``spiders.record``: an image URL with an outcome is never fetched again, requested-but-unfinished
ones first), the image check, hash and store in the work pool and the item decisions
(``spiders.intake``), the bounds (``spiders.bounds``), and the crawl directory it writes
(items.parquet, pages.parquet, rejected.parquet, crawl_stats.json with the same keys).

Stops: every URL has an outcome (``finished``), an image bound (``max_images``,
``max_images_per_topic``), ``timeout_s`` (``timeout``) or SIGINT (``interrupted``); in-flight
downloads finish first (each bounded by ``download_timeout_s``), so the journal stays whole.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from .bounds import LocalBounds
from .guard import scheme_refusal, shown_url
from .images import ImageRejected
from .intake import OVER_LIMIT, admit, check_and_store, image_item, listed_image_meta
from .record import CrawlRecord
from .spec import CrawlSpec
from .urlfetch import Counts, Fetcher, Refused
from .workpool import WorkPool

# The event loop shares the GIL with the work pool: ``spiders.run`` (the crawl's own process)
# makes threads hand it back after 0.5 ms instead of 5, so a decode does not hold up the downloads.
SWITCH_INTERVAL_S = 0.0005


def uses_url_fetcher(spec: CrawlSpec) -> bool:
    """A url list crawled by one process (a distributed run shares Scrapy's Redis frontier)."""
    return spec.crawl.source == "urls" and spec.frontier is None and not any(spec.topics.values())


class UrlListCrawl:
    """One url-list crawl: a queue of (url, provenance), ``concurrent_requests`` workers."""

    def __init__(self, spec: CrawlSpec, progress: Callable[[str], None] | None = None) -> None:
        self.spec, self.config = spec, spec.crawl
        self.record = CrawlRecord(spec.out_dir, progress, spec.state_dir)
        self.bounds = LocalBounds(self.config, self.record)
        self.counts = Counts()
        self.record.live_stats = lambda: self.counts.values
        self.work = WorkPool()
        self.queue: deque[tuple[str, dict[str, Any]]] = deque()
        self.stop_reason: str | None = None

    def plan(self) -> None:
        """Replay the journal, then queue its unfinished images and the list's new ones."""
        state = self.record.open_journal()
        seen = set(state.images) | state.images_done
        self.queue.extend(state.pending_images)
        new: list[tuple[str, dict[str, Any]]] = []
        for topic, candidates in self.spec.images.items():
            for candidate in candidates:
                url = candidate["image_url"]
                if url in seen or shown_url(url) in seen:
                    continue
                seen.add(url)
                meta = listed_image_meta(candidate, topic, self.config)
                if (why := scheme_refusal(url)) is not None:
                    self._reject(shown_url(url), meta, "unsupported_scheme", why)
                    continue
                new.append((url, meta))
        self.record.requested_images(new)  # journaled before any is fetched, in one write
        self.queue.extend(new)

    def bound_reached(self) -> str | None:
        if self.bounds.images_full():
            return "max_images"
        topics = list(self.spec.images)
        if self.config.max_images_per_topic and all(self.bounds.topic_full(t) for t in topics):
            return "max_images_per_topic"
        return None

    def stop(self, reason: str) -> None:
        self.stop_reason = self.stop_reason or reason

    async def run(self) -> str:
        """Fetch until the queue is empty or a stop; the finish reason."""
        loop = asyncio.get_running_loop()
        timer = loop.call_later(self.config.timeout_s, self.stop, "timeout")
        try:
            loop.add_signal_handler(signal.SIGINT, self.stop, "interrupted")
        except (RuntimeError, ValueError):  # not the main thread (a test runs it in-process)
            pass
        try:
            async with Fetcher(self.config, self.counts) as fetcher:
                workers = min(self.config.concurrent_requests, max(1, len(self.queue)))
                await asyncio.gather(*(self._worker(fetcher) for _ in range(workers)))
        finally:
            timer.cancel()
            try:
                loop.remove_signal_handler(signal.SIGINT)
            except (RuntimeError, ValueError):
                pass
            self.work.close()
        return self.stop_reason or self.bound_reached() or "finished"

    async def _worker(self, fetcher: Fetcher) -> None:
        while self.queue and self.stop_reason is None:
            if reason := self.bound_reached():
                self.stop(reason)
                return
            url, meta = self.queue.popleft()
            await self._one(fetcher, url, meta)

    async def _one(self, fetcher: Fetcher, url: str, meta: dict[str, Any]) -> None:
        try:
            body, content_type = await fetcher.image(url)
            stored = await self.work.run(check_and_store, body, content_type, self.config, self.record)
        except (Refused, ImageRejected) as no:
            self._reject(url, meta, no.reason, no.detail)
            return
        if admit(self.record, self.bounds, image_item(url, meta, stored)) == OVER_LIMIT:
            self.stop(self.bound_reached() or "max_images")

    def _reject(self, url: str, meta: dict[str, Any], reason: str, detail: str) -> None:
        self.counts.inc(f"lora_factory/rejected/{reason}")
        self.record.reject(url, meta.get("page_url"), meta.get("topic"), reason, detail)


def crawl_url_list(spec: CrawlSpec, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the url-list crawl to completion (or a stop) and write the crawl directory."""
    started = time.monotonic()
    crawl = UrlListCrawl(spec, progress)
    crawl.plan()
    reason = asyncio.run(crawl.run())
    stats = {**crawl.counts.values, "finish_reason": reason}
    summary = crawl.record.summary(stats, reason, time.monotonic() - started)
    return crawl.record.write(summary)
