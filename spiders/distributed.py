"""Distributed crawl mode: N crawler processes of one run share a Redis frontier and seen-set.

Selected by ``CrawlConfig.redis_url``. Each process is started with ``run_crawl(...,
worker=NAME)`` (same ``out_dir`` and run id for all of them) and writes its own part,
``<out_dir>/parts/<worker>/`` (items/pages/rejected parquet, crawl_stats.json, images/);
``merge_parts(out_dir)`` then produces the stage's ``items.parquet``, ``pages.parquet``,
``rejected.parquet``, ``crawl_stats.json`` and ``images/``, merging byte-identical images found
by different workers into one item (the others' URLs go to ``other_urls``).

Redis keys, all under ``<redis_key_prefix>:<run id>:`` so runs never collide:
``requests`` (scrapy-redis priority queue: the shared frontier), ``dupefilter`` (fingerprints
of every request any worker scheduled: the shared seen-set), ``workers`` (names of the workers
that joined), ``alive:<worker>`` (value: the worker's pid) and ``busy:<worker>`` (short-TTL
heartbeats), ``inflight:<worker>`` (requests the worker took and has not finished,
``spiders.inflight``), ``count:images``, ``count:topics``, ``count:pages`` (the run's bounds,
``spiders.bounds``).

How the processes coordinate:
- Seeding: every worker yields the seeds, and the shared seen-set (one atomic SADD per
  request) lets only the first worker's copies into the frontier; the others start idle.
- Dedup: every first-hop request (not a redirect hop or a retry, which continue a request a
  worker already owns) is checked against the shared seen-set, whatever its ``dont_filter``
  (the topic spider sets ``dont_filter`` for its own in-process reasons).
- Waiting and stopping: an idle worker keeps polling the frontier while another worker is busy
  (has requests in flight) or nothing has been seeded yet, for at most ``MAX_IDLE_S`` of
  continuous idleness; it stops when the frontier is empty and no other worker is busy. A
  worker with requests in flight is never idle, and a non-empty frontier makes no worker idle,
  so the last worker never leaves work behind.
- Killed workers: a request taken from the frontier stays in the worker's in-flight hash until
  the worker has finished it (``spiders.inflight``). A worker re-queues its own hash when it
  starts (a restarted worker, same name), and any idle worker re-queues the hash of a worker
  whose heartbeat has expired before it concludes the frontier is empty. At least once: a
  request finished just before the kill may be done twice; ``merge_parts`` folds the copies.
  Worker names must be unique among running workers (a second process with a running worker's
  name would take over that worker's in-flight requests).
- Bounds: ``max_images``, ``max_images_per_topic`` and ``max_pages`` are the run's, not each
  worker's: counted in Redis (``spiders.bounds``), so N workers keep at most ``max_images``
  images in all (fewer after ``merge_parts`` folds byte copies found by different workers).
- Cleanup: the last worker to leave a *finished* crawl deletes the run's keys; an interrupted,
  timed-out or bounded crawl keeps them, so re-running the workers resumes the frontier. A
  killed worker's part (``parts/<worker>``) is only written when that worker is re-run under
  the same name: its journal holds what it did before the kill.

Why subclasses instead of scrapy-redis as is (0.9.1 against Scrapy 2.19): its dupefilter
fingerprints with its own sha1 of (method, canonical URL, body) and ignores
``crawler.request_fingerprinter``; its scheduler builds the dupefilter from settings/spider,
never from the crawler; it skips the filter for every ``dont_filter`` request (all of ours);
its ``close`` flushes the *shared* queue and seen-set as soon as any one worker finishes
(``SCHEDULER_PERSIST=False``) and keeps them forever otherwise; and its idle wait
(``SCHEDULER_IDLE_BEFORE_CLOSE``) is a blocking Redis pop on the reactor thread.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import socket
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

import redis
from scrapy import signals
from scrapy.exceptions import DontCloseSpider
from scrapy.http import Request
from scrapy_redis.dupefilter import RFPDupeFilter
from scrapy_redis.scheduler import Scheduler
from twisted.internet import task

from lora_factory.config import CrawlConfig
from lora_factory.manifest import read_items, read_table, write_items, write_table

from .bounds import SharedBounds, count_keys
from .inflight import InFlightQueue, requeue
from .topic_spider import PAGE_KEY

if TYPE_CHECKING:
    from scrapy.crawler import Crawler

logger = logging.getLogger(__name__)

RUN_ID_SETTING = "LORA_FACTORY_RUN_ID"
WORKER_SETTING = "LORA_FACTORY_WORKER"
MAX_IDLE_SETTING = "LORA_FACTORY_MAX_IDLE_S"
MAX_IDLE_S = 15.0  # continuous idleness after which a waiting worker gives up
POLL_S = 0.2  # how often an idle worker looks at the frontier again
TTL_MS = 3000  # heartbeat keys expire this long after the last refresh
NO_FILTER_META = "lora_factory_no_shared_filter"  # opt a request out of the shared seen-set
PARTS_DIR = "parts"
_CONTINUATION_META = ("redirect_times", "retry_times")


def default_run_id(out_dir: Path) -> str:
    """A run id for workers sharing one ``out_dir`` (the crawl stage's folder) on one file system."""
    return hashlib.sha1(str(Path(out_dir).resolve()).encode()).hexdigest()[:16]


def default_worker() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def run_key(config: CrawlConfig, run_id: str) -> str:
    return f"{config.redis_key_prefix}:{run_id}"


def redis_settings(config: CrawlConfig, run_id: str, worker: str) -> dict[str, Any]:
    """The Scrapy settings that switch a crawl to the shared Redis frontier (see module doc)."""
    key = run_key(config, run_id)
    return {
        "SCHEDULER": "spiders.distributed.RedisScheduler",
        "DUPEFILTER_CLASS": "spiders.distributed.RedisDupeFilter",
        "SCHEDULER_QUEUE_CLASS": "spiders.inflight.InFlightQueue",
        "SCHEDULER_QUEUE_KEY": f"{key}:requests",
        "SCHEDULER_DUPEFILTER_KEY": f"{key}:dupefilter",
        "SCHEDULER_PERSIST": True,  # cleanup is the coordinator's job (the last worker out)
        "SCHEDULER_IDLE_BEFORE_CLOSE": 0,  # never a blocking pop on the reactor thread
        "REDIS_URL": config.redis_url,
        RUN_ID_SETTING: run_id,
        WORKER_SETTING: worker,
        "EXTENSIONS": {"spiders.distributed.WorkerCoordinator": 0},
    }


class RunKeys:
    """Names of a run's Redis keys."""

    def __init__(self, queue_key: str, worker: str) -> None:
        self.base = queue_key.rsplit(":", 1)[0]
        self.queue = queue_key
        self.dupefilter = f"{self.base}:dupefilter"
        self.workers = f"{self.base}:workers"
        self.worker = worker

    def alive(self, worker: str) -> str:
        return f"{self.base}:alive:{worker}"

    def busy(self, worker: str) -> str:
        return f"{self.base}:busy:{worker}"

    def inflight(self, worker: str) -> str:
        return f"{self.base}:inflight:{worker}"


def shared_bounds(settings: Any, config: CrawlConfig) -> SharedBounds:
    """The run's bounds in Redis, for a crawler with ``redis_settings``."""
    server = redis.Redis.from_url(settings["REDIS_URL"], socket_timeout=10)
    return SharedBounds(server, RunKeys(settings["SCHEDULER_QUEUE_KEY"], "").base, config)


def requeue_orphans(server: Any, keys: RunKeys, include_self: bool) -> int:
    """Re-queue the in-flight requests of workers whose heartbeat expired (and, at start, this
    worker's own, left by a previous process of the same name); returns how many."""
    names = {w.decode() for w in server.smembers(keys.workers)} | {keys.worker}
    moved = 0
    for name in sorted(names):
        if name == keys.worker and not include_self:
            continue
        if name != keys.worker and server.exists(keys.alive(name)):
            continue
        if n := requeue(server, keys.queue, keys.inflight(name)):
            logger.info("re-queued %d requests worker %s had in flight", n, name)
            moved += n
    return moved


class RedisDupeFilter(RFPDupeFilter):
    """scrapy-redis's shared seen-set, fingerprinting with Scrapy's ``request_fingerprinter``."""

    def __init__(self, server: Any, key: str, debug: bool = False, crawler: Crawler | None = None):
        super().__init__(server, key, debug)
        self.fingerprinter = crawler.request_fingerprinter if crawler is not None else None

    def request_fingerprint(self, request: Request) -> str:
        if self.fingerprinter is None:
            return super().request_fingerprint(request)
        return self.fingerprinter.fingerprint(request).hex()

    def close(self, reason: str = "") -> None:
        """Never clear the shared set when one process closes (the coordinator cleans up)."""


class RedisScheduler(Scheduler):
    """scrapy-redis's scheduler with a shared seen-set check for every first-hop request, the
    run's page budget, and in-flight tracking of what this worker took from the frontier."""

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        settings = crawler.settings
        instance = cls.from_settings(settings)
        instance.crawler = crawler
        instance.stats = crawler.stats
        instance.df = RedisDupeFilter(
            instance.server,
            settings["SCHEDULER_DUPEFILTER_KEY"],
            settings.getbool("DUPEFILTER_DEBUG"),
            crawler,
        )
        instance.keys = RunKeys(settings["SCHEDULER_QUEUE_KEY"], settings[WORKER_SETTING])
        return instance

    def open(self, spider: Any) -> None:
        super().open(spider)
        if not isinstance(self.queue, InFlightQueue):
            raise TypeError(f"distributed mode needs SCHEDULER_QUEUE_CLASS {InFlightQueue.__name__}")
        self.queue.inflight_key = self.keys.inflight(self.keys.worker)
        moved = requeue_orphans(self.server, self.keys, include_self=True)
        if moved and self.stats:
            self.stats.inc_value("lora_factory/distributed/requeued", moved)

    def enqueue_request(self, request: Request) -> bool:
        first_hop = not any(k in request.meta for k in _CONTINUATION_META)
        if first_hop and not request.meta.get(NO_FILTER_META) and self.df.request_seen(request):
            self.df.log(request, self.spider)
            if self.stats:
                self.stats.inc_value("lora_factory/distributed/filtered")
            return False
        bounds = getattr(self.spider, "bounds", None)
        is_page = PAGE_KEY in request.meta
        if first_hop and is_page and isinstance(bounds, SharedBounds) and not bounds.reserve_page():
            self.spider.bounds_hit.add("max_pages")
            if self.stats:
                self.stats.inc_value("lora_factory/pages_over_limit")
            return False
        if self.stats:
            self.stats.inc_value("scheduler/enqueued/redis")
        self.queue.push(request)
        return True

    def next_request(self) -> Request | None:
        request = self.queue.pop(0)
        if request is not None:
            # Busy from the moment a request leaves the frontier: no other worker may conclude
            # the crawl is over while this one still holds work.
            self.server.set(self.keys.busy(self.keys.worker), 1, px=TTL_MS)
            if self.stats:
                self.stats.inc_value("scheduler/dequeued/redis")
        return request

    def forget_finished(self) -> int:
        """Delete the in-flight entries of the requests the engine has finished with."""
        engine = self.crawler.engine
        # Private attribute: the engine's set of requests between the scheduler and the end of
        # their callback's output; Scrapy 2.19 has no public signal for "request handled".
        in_progress = getattr(getattr(engine, "_slot", None), "inprogress", None)
        if in_progress is None:
            raise RuntimeError("this Scrapy version has no engine._slot.inprogress: "
                               "in-flight tracking for distributed mode needs Scrapy 2.19")
        return self.queue.forget_finished(in_progress)

    def close(self, reason: str) -> None:
        """Keep the shared queue and seen-set (see ``WorkerCoordinator.spider_closed``)."""


class WorkerCoordinator:
    """Heartbeats, the bounded wait for work, and cleanup by the last worker of a finished crawl."""

    def __init__(self, crawler: Crawler) -> None:
        self.crawler = crawler
        settings = crawler.settings
        self.server = redis.Redis.from_url(settings["REDIS_URL"], socket_timeout=10)
        self.keys = RunKeys(settings["SCHEDULER_QUEUE_KEY"], settings[WORKER_SETTING])
        self.max_idle_s = settings.getfloat(MAX_IDLE_SETTING, MAX_IDLE_S)
        self.idle_since: float | None = None
        self.loop: task.LoopingCall | None = None
        self.waited_s = 0.0

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        ext = cls(crawler)
        crawler.signals.connect(ext.spider_opened, signal=signals.spider_opened)
        crawler.signals.connect(ext.spider_idle, signal=signals.spider_idle)
        crawler.signals.connect(ext.spider_closed, signal=signals.spider_closed)
        return ext

    def _scheduler(self) -> RedisScheduler | None:
        engine = self.crawler.engine
        scheduler = engine.scheduler if engine is not None else None
        return scheduler if isinstance(scheduler, RedisScheduler) else None

    def spider_opened(self, spider: Any) -> None:
        self.server.sadd(self.keys.workers, self.keys.worker)
        if (scheduler := self._scheduler()) is not None:
            scheduler.forget_finished()  # fails now, not after a kill, if Scrapy changed
        self._beat()
        self.loop = task.LoopingCall(self._tick)
        self.loop.start(POLL_S, now=False)

    def _beat(self) -> None:
        pipe = self.server.pipeline()
        pipe.set(self.keys.alive(self.keys.worker), os.getpid(), px=TTL_MS)
        engine = self.crawler.engine
        if engine is not None and engine.scheduler is not None and not engine.spider_is_idle():
            pipe.set(self.keys.busy(self.keys.worker), 1, px=TTL_MS)
            self.idle_since = None  # working again: the idle bound counts continuous idleness
        pipe.execute()

    def _tick(self) -> None:
        try:
            self._beat()
            if (scheduler := self._scheduler()) is not None:
                scheduler.forget_finished()
            check_bounds = getattr(self.crawler.spider, "check_image_bounds", None)
            if check_bounds is not None:
                check_bounds()  # another worker may have used up the run's image budget
        except redis.RedisError as exc:
            logger.warning("redis heartbeat failed: %s", exc)
            return
        engine = self.crawler.engine
        if self.idle_since is not None and engine is not None:
            # Waiting for work: poll the frontier (and re-run the idle check) now rather than at
            # the engine's 5 s heartbeat. Private attribute: Scrapy 2.19 has no public call for it.
            slot = getattr(engine, "_slot", None)
            if slot is not None:
                slot.nextcall.schedule()

    def _others(self, what: str) -> list[str]:
        names = sorted(w.decode() for w in self.server.smembers(self.keys.workers))
        others = [w for w in names if w != self.keys.worker]
        if not others:
            return []
        key = self.keys.busy if what == "busy" else self.keys.alive
        pipe = self.server.pipeline()
        for w in others:
            pipe.exists(key(w))
        return [w for w, flag in zip(others, pipe.execute(), strict=True) if flag]

    def spider_idle(self, spider: Any) -> None:
        now = time.monotonic()
        if self.idle_since is None:
            self.idle_since = now
        if moved := requeue_orphans(self.server, self.keys, include_self=False):
            if self.crawler.stats:
                self.crawler.stats.inc_value("lora_factory/distributed/requeued", moved)
            self.idle_since = None
            raise DontCloseSpider  # a dead worker's requests are back in the frontier
        seeded = bool(self.server.exists(self.keys.dupefilter))
        busy = self._others("busy")
        if seeded and not busy:
            logger.info("frontier empty and no other worker busy: stopping")
            return
        waited = now - self.idle_since
        if waited >= self.max_idle_s:
            logger.info(
                "idle for %.1f s (%s): stopping", waited,
                f"waiting for {', '.join(busy)}" if busy else "nothing seeded",
            )
            return
        raise DontCloseSpider

    def spider_closed(self, spider: Any, reason: str) -> None:
        if self.loop is not None and self.loop.running:
            self.loop.stop()
        if (scheduler := self._scheduler()) is not None:
            scheduler.forget_finished()
        holding = self.server.hlen(self.keys.inflight(self.keys.worker))
        pipe = self.server.pipeline()
        if not holding:  # else stay listed, so another worker re-queues them
            pipe.srem(self.keys.workers, self.keys.worker)
        pipe.delete(self.keys.alive(self.keys.worker), self.keys.busy(self.keys.worker))
        pipe.execute()
        if holding:
            logger.warning("closing with %d requests in flight: left for another worker", holding)
        if reason != "finished":
            logger.info("crawl %s: keeping the shared frontier for a resume", reason)
            return
        names = [w.decode() for w in self.server.smembers(self.keys.workers)] + [self.keys.worker]
        inflight = [self.keys.inflight(w) for w in names]
        if self._others("alive") or self.server.zcard(self.keys.queue) or any(
            self.server.hlen(k) for k in inflight
        ):
            return
        self.server.delete(self.keys.queue, self.keys.dupefilter, self.keys.workers, *inflight,
                           *count_keys(self.keys.base))
        logger.info("last worker of a finished crawl: deleted %s:*", self.keys.base)

def delete_run_keys(config: CrawlConfig, run_id: str) -> int:
    """Delete every Redis key of a run (e.g. to restart a crawl from scratch)."""
    server = redis.Redis.from_url(config.redis_url or "redis://127.0.0.1:6379")
    keys = list(server.scan_iter(f"{run_key(config, run_id)}:*"))
    return server.delete(*keys) if keys else 0


# -- merge -------------------------------------------------------------------------------------
def part_dirs(out_dir: Path) -> list[Path]:
    root = Path(out_dir) / PARTS_DIR
    return sorted(p for p in root.iterdir() if (p / "crawl_stats.json").exists()) if root.exists() else []


_SUMMED = (
    "pages", "pages_requested", "pages_noai", "image_urls", "byte_duplicates_merged",
    "images_over_limit", "bytes", "requests", "rejected", "robots_forbidden", "links_off_topic",
)


def merge_parts(out_dir: Path) -> dict[str, Any]:
    """Merge ``<out_dir>/parts/*`` into the stage's items/pages/rejected/crawl_stats/images.

    Items are merged by content hash across workers: the earliest crawled copy is kept and the
    other copies' URLs are added to its ``other_urls``. Returns the merged stats, which also list
    each worker's own stats under ``workers``.
    """
    from .record import PAGE_SCHEMA, REJECTED_SCHEMA

    out_dir = Path(out_dir)
    parts = part_dirs(out_dir)
    if not parts:
        raise FileNotFoundError(f"no finished worker parts under {out_dir / PARTS_DIR}")
    images_dir = out_dir / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    items: dict[str, dict[str, Any]] = {}
    cross_merged = 0
    all_items = []
    for part in parts:
        for row in read_items(part / "items.parquet"):
            all_items.append((row["crawl_time"], part, row))
    for _, part, row in sorted(all_items, key=lambda t: (t[0], t[1].name)):
        kept = items.get(row["item_id"])
        if kept is None:
            row["other_urls"] = list(row.get("other_urls") or [])
            items[row["item_id"]] = row
            name = Path(row["image_path"]).name
            target = images_dir / name
            if not target.exists():
                try:
                    os.link(part / "images" / name, target)
                except OSError:
                    shutil.copyfile(part / "images" / name, target)
            continue
        cross_merged += 1
        for url in [row["image_url"], *(row.get("other_urls") or [])]:
            if url != kept["image_url"] and url not in kept["other_urls"]:
                kept["other_urls"].append(url)
    pages: dict[str, dict[str, Any]] = {}
    rejected: list[dict[str, Any]] = []
    for part in parts:
        for row in read_table(part / "pages.parquet", PAGE_SCHEMA).to_pylist():
            pages.setdefault(row["url"], row)
        rejected.extend(read_table(part / "rejected.parquet", REJECTED_SCHEMA).to_pylist())
    write_items(out_dir / "items.parquet", list(items.values()))
    write_table(out_dir / "pages.parquet", list(pages.values()), PAGE_SCHEMA)
    write_table(out_dir / "rejected.parquet", rejected, REJECTED_SCHEMA)

    worker_stats = {
        p.name: json.loads((p / "crawl_stats.json").read_text(encoding="utf-8")) for p in parts
    }
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
    tmp = out_dir / "crawl_stats.json.tmp"
    tmp.write_text(json.dumps(stats, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")
    tmp.replace(out_dir / "crawl_stats.json")
    return stats


def run_workers(
    topics_to_urls: dict[str, list[str]],
    out_dir: Path,
    config: Any,
    workers: int,
    run_id: str,
    on_progress: Any = None,
    state_dir: Path | None = None,
    models_dir: Path | None = None,
    topics_to_images: dict[str, list[dict[str, Any]]] | None = None,
) -> dict[str, Any]:
    """Run ``workers`` crawler processes of one run on the shared frontier, then merge their parts.

    Each worker is a ``run_crawl`` subprocess named ``w<i>`` (so a re-run resumes its part);
    progress lines are prefixed with the worker's name. Raises the first worker's error.
    """
    from concurrent.futures import ThreadPoolExecutor

    from lora_factory.errors import StageError

    from .crawl import run_crawl

    def one(i: int) -> dict[str, Any]:
        name = f"w{i}"
        progress = (lambda line: on_progress(f"[{name}] {line}")) if on_progress else None
        return run_crawl(topics_to_urls, out_dir, config, on_progress=progress, state_dir=state_dir,
                         models_dir=models_dir, worker=name, run_id=run_id,
                         topics_to_images=topics_to_images)

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="crawl-worker") as pool:
        futures = [pool.submit(one, i) for i in range(workers)]
        for future in futures:
            future.result()
    stats = merge_parts(out_dir)
    if not stats.get("images"):
        urls = [u for us in topics_to_urls.values() for u in us]
        raise StageError(f"the crawl found no images at {urls[:3]}: check the topics/seed URLs")
    return stats
