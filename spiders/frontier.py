"""The shared Redis frontier: the Scrapy components a distributed crawl runs *inside* each
crawler process (scheduler, seen-set, heartbeats and the bounded wait for work).

Selected by a spec with a ``frontier`` (``spiders.spec``); the parent side (starting workers,
merging their parts) is ``spiders.workers``, the key layout ``spiders.redis_keys``.

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
  request finished just before the kill may be done twice; the merge folds the copies.
  Worker names must be unique among running workers (a second process with a running worker's
  name would take over that worker's in-flight requests).
- Bounds: ``max_images``, ``max_images_per_topic`` and ``max_pages`` are the run's, not each
  worker's: counted in Redis (``spiders.bounds``).
- Cleanup: the last worker to leave a *finished* crawl deletes the run's keys; an interrupted,
  timed-out or bounded crawl keeps them, so re-running the workers resumes the frontier.

The Redis URL reaches these components as a ``RedisAddress`` setting, whose printed form has
its password masked: Scrapy logs every overridden setting at start-up.

Why subclasses instead of scrapy-redis as is (0.9.1 against Scrapy 2.19): its dupefilter
fingerprints with its own sha1 of (method, canonical URL, body) and ignores
``crawler.request_fingerprinter``; its scheduler builds the dupefilter from settings/spider,
never from the crawler; it skips the filter for every ``dont_filter`` request (all of ours);
its ``close`` flushes the *shared* queue and seen-set as soon as any one worker finishes
(``SCHEDULER_PERSIST=False``) and keeps them forever otherwise; and its idle wait
(``SCHEDULER_IDLE_BEFORE_CLOSE``) is a blocking Redis pop on the reactor thread.
"""

from __future__ import annotations

import logging
import os
import time
from typing import TYPE_CHECKING, Any, Self

import redis
from scrapy import signals
from scrapy.exceptions import DontCloseSpider
from scrapy.http import Request
from scrapy_redis.dupefilter import RFPDupeFilter
from scrapy_redis.scheduler import Scheduler
from twisted.internet import task

from lora_factory.config import CrawlConfig
from lora_factory.secrets import redact_url

from .bounds import SharedBounds
from .inflight import InFlightQueue, requeue
from .meta import CONTINUATION_META, NO_FILTER_META, PAGE_KEY
from .redis_keys import RunKeys, run_key
from .spec import Frontier

if TYPE_CHECKING:
    from scrapy.crawler import Crawler
    from scrapy.settings import BaseSettings

logger = logging.getLogger(__name__)

REDIS_SETTING = "LORA_FACTORY_REDIS"
RUN_KEY_SETTING = "LORA_FACTORY_RUN_KEY"
WORKER_SETTING = "LORA_FACTORY_WORKER"
MAX_IDLE_SETTING = "LORA_FACTORY_MAX_IDLE_S"
MAX_IDLE_S = 15.0  # continuous idleness after which a waiting worker gives up
POLL_S = 0.2  # how often an idle worker looks at the frontier again
TTL_MS = 3000  # heartbeat keys expire this long after the last refresh


class RedisAddress:
    """A Redis URL held in Scrapy's settings; printed (and logged) with its password masked."""

    def __init__(self, url: str) -> None:
        self.url = url

    def __repr__(self) -> str:
        return f"RedisAddress({redact_url(self.url)!r})"


def frontier_settings(config: CrawlConfig, frontier: Frontier) -> dict[str, Any]:
    """The Scrapy settings that switch a crawl to the shared Redis frontier."""
    if not config.redis_url:
        raise ValueError("a frontier needs crawl.redis_url")
    return {
        "SCHEDULER": "spiders.frontier.RedisScheduler",
        "DUPEFILTER_CLASS": "spiders.frontier.RedisDupeFilter",
        REDIS_SETTING: RedisAddress(config.redis_url),
        RUN_KEY_SETTING: run_key(config, frontier.run_id),
        WORKER_SETTING: frontier.worker,
        "EXTENSIONS": {"spiders.frontier.WorkerCoordinator": 0},
    }


def redis_client(settings: BaseSettings) -> redis.Redis:
    address = settings[REDIS_SETTING]
    return redis.Redis.from_url(address.url, socket_timeout=10, socket_connect_timeout=5)


def run_keys(settings: BaseSettings) -> RunKeys:
    return RunKeys(settings[RUN_KEY_SETTING], settings[WORKER_SETTING])


def shared_bounds(settings: BaseSettings, config: CrawlConfig) -> SharedBounds:
    """The run's bounds in Redis, for a crawler with ``frontier_settings``."""
    return SharedBounds(redis_client(settings), run_keys(settings).counts, config)


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

    crawler: Crawler
    keys: RunKeys

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        settings = crawler.settings
        server = redis_client(settings)
        keys = run_keys(settings)
        dupefilter = RedisDupeFilter(server, keys.dupefilter, settings.getbool("DUPEFILTER_DEBUG"),
                                     crawler)
        instance = cls(
            server=server,
            persist=True,  # cleanup is the coordinator's job (the last worker out)
            queue_key=keys.queue.replace("%", "%%"),  # scrapy-redis %-formats the queue key
            queue_cls=f"{InFlightQueue.__module__}.{InFlightQueue.__name__}",
            dupefilter=dupefilter,
            idle_before_close=0,  # never a blocking pop on the reactor thread
        )
        server.ping()
        instance.crawler, instance.stats, instance.keys = crawler, crawler.stats, keys
        return instance

    def open(self, spider: Any) -> None:
        super().open(spider)
        if not isinstance(self.queue, InFlightQueue):
            raise TypeError(f"distributed mode needs the {InFlightQueue.__name__} queue")
        self.queue.inflight_key = self.keys.inflight(self.keys.worker)
        moved = requeue_orphans(self.server, self.keys, include_self=True)
        if moved and self.stats:
            self.stats.inc_value("lora_factory/distributed/requeued", moved)

    def enqueue_request(self, request: Request) -> bool:
        first_hop = not any(k in request.meta for k in CONTINUATION_META)
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
        self.server = redis_client(crawler.settings)
        self.keys = run_keys(crawler.settings)
        self.max_idle_s = crawler.settings.getfloat(MAX_IDLE_SETTING, MAX_IDLE_S)
        self.idle_since: float | None = None
        self.loop: task.LoopingCall | None = None

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
        self.server.delete(*self.keys.all_fixed(), *inflight)
        logger.info("last worker of a finished crawl: deleted %s:*", self.keys.base)
