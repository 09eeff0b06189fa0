"""Distributed crawl mode: two crawler processes share one Redis frontier (127.0.0.1:6379)."""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import redis  # noqa: E402 - a locked dependency

from lora_factory.config import CrawlConfig
from lora_factory.manifest import read_items
from spiders.crawl import run_crawl
from spiders.sources.demo_site import generate_demo_site, serve_site
from spiders.workers import merge_parts, run_worker, run_workers

REDIS_URL = "redis://127.0.0.1:6379/0"
LATENCY_S = 0.1  # per response: with 2 requests in flight per worker, one worker cannot drain
# the site before the other has started (Scrapy start-up takes seconds on a busy machine)


def _redis_or_fail() -> Any:
    """The machine's Redis. Its absence is a failure, not a skip: scale-out is tested for real."""
    server = redis.Redis.from_url(REDIS_URL)
    try:
        server.ping()
    except redis.RedisError as exc:
        pytest.fail(f"no Redis at {REDIS_URL} ({exc}): start it, e.g. redis-server --daemonize yes")
    return server


class RequestLog(Counter):
    """Handed to ``serve_site`` as its hit counter: the handler does ``hits[path] += 1`` once per
    request, so each ``__setitem__`` is one request; they are logged under a lock (``+=`` from
    two handler threads could lose a count) and each one takes LATENCY_S longer."""

    def __init__(self) -> None:
        super().__init__()
        self.lock = threading.Lock()
        self.paths: list[str] = []

    def __setitem__(self, key: str, value: int) -> None:
        time.sleep(LATENCY_S)
        with self.lock:
            self.paths.append(key)
            super().__setitem__(key, value)


class StartTogether(RequestLog):
    """Holds the first ``/robots.txt`` request (each worker's first) until the other worker asks
    for it too (at most ``timeout_s``), so a worker that starts late on a loaded machine still
    finds work: both begin crawling at the same moment."""

    def __init__(self, workers: int = 2, timeout_s: float = 30.0) -> None:
        super().__init__()
        self.barrier = threading.Barrier(workers, timeout=timeout_s)

    def __setitem__(self, key: str, value: int) -> None:
        if key == "/robots.txt" and value == 1:
            with contextlib.suppress(threading.BrokenBarrierError):
                self.barrier.wait()
        super().__setitem__(key, value)


def _config(**overrides: Any) -> CrawlConfig:
    settings = {
        "allow_loopback": True, "min_image_side": 48, "max_depth": 4, "timeout_s": 60.0,
        # Politeness lifted for loopback; few requests in flight so the work is shared.
        "autothrottle": False, "concurrent_requests": 2, "concurrent_requests_per_domain": 2,
    }
    return CrawlConfig(**{**settings, **overrides})


def _urls(items: list[dict[str, Any]]) -> set[str]:
    return {u for row in items for u in [row["image_url"], *(row["other_urls"] or [])]}


def _paths(items: list[dict[str, Any]], base: str) -> dict[str, set[str]]:
    """item_id -> the URL paths where those bytes were found (ports differ between servers)."""
    return {
        row["item_id"]: {u.removeprefix(base) for u in [row["image_url"], *(row["other_urls"] or [])]}
        for row in items
    }


def _single_process_paths(site: Any, out: Path) -> dict[str, set[str]]:
    """The reference: a one-process crawl of ``site`` from its own server."""
    with serve_site(site.root) as base:
        run_crawl(site.topic_urls(base), out, _config())
        return _paths(read_items(out / "items.parquet"), base)


class _Workers:
    """Named crawl workers (each ``run_crawl`` in a subprocess) on threads; their stats, or the
    exception they ended with, by name."""

    def __init__(self, site: Any, out: Path, config: CrawlConfig) -> None:
        self.site, self.out, self.config = site, out, config
        self.base = ""  # set once the site is served
        self.results: dict[str, Any] = {}

    def _run(self, name: str) -> None:
        try:
            self.results[name] = run_worker(self.site.topic_urls(self.base), self.out, self.config,
                                            name)
        except BaseException as exc:  # reported by run_all / the test
            self.results[name] = exc

    def start(self, name: str) -> threading.Thread:
        thread = threading.Thread(target=self._run, args=(name,))
        thread.start()
        return thread

    def run_all(self, *names: str) -> None:
        """Run ``names`` side by side to the end; fail on any worker's exception."""
        for thread in [self.start(n) for n in names]:
            thread.join(timeout=120)
        for name in names:
            assert not isinstance(self.results.get(name), BaseException), self.results.get(name)


def test_two_workers_share_the_frontier(tmp_path: Path) -> None:
    server = _redis_or_fail()
    prefix = f"lf-test-{uuid.uuid4().hex[:12]}"
    site = generate_demo_site(tmp_path / "site", seed=0)
    try:
        single = _single_process_paths(site, tmp_path / "single")

        hits = StartTogether()  # a worker that starts late on a busy machine still finds work
        out = tmp_path / "distributed"
        workers = _Workers(site, out, _config(redis_url=REDIS_URL, redis_key_prefix=prefix))
        results = workers.results

        started = time.monotonic()
        with serve_site(site.root, hits=hits) as base2:
            workers.base = base2
            workers.run_all("a", "b")
        seconds = time.monotonic() - started

        # No URL fetched twice across both processes (each fetches robots.txt for itself).
        fetched = Counter(hits.paths)
        twice = {p: n for p, n in fetched.items() if n > 1 and p != "/robots.txt"}
        assert not twice, twice
        assert fetched["/robots.txt"] <= 2
        # Both processes did some of the work.
        for name in ("a", "b"):
            s = results[name]
            done = s["pages_requested"] + s["image_urls"] + s["rejected"]
            assert done > 0, f"worker {name} did nothing: {s}"
        parts = {n: _paths(read_items(out / "parts" / n / "items.parquet"), base2) for n in "ab"}

        stats = merge_parts(out)
        merged = _paths(read_items(out / "items.parquet"), base2)
        # The union is complete: the same items (by content hash) with the same URLs.
        assert merged == single
        assert stats["images"] == len(single)
        assert set(stats["workers"]) == {"a", "b"}
        assert stats["finish_reason"] == "finished"
        assert all(any((out / "images").glob(f"{i}.*")) for i in merged)
        # Cross-worker content dedup happened where both workers found the same bytes.
        shared = set(parts["a"]) & set(parts["b"])
        assert stats["byte_duplicates_across_workers"] == len(shared)
        # A finished crawl leaves nothing in Redis.
        assert not list(server.scan_iter(f"{prefix}:*"))
        print(
            f"\ntwo workers: {seconds:.1f} s, {len(hits.paths)} requests, pages a/b = {results['a']['pages_requested']}/"
            f"{results['b']['pages_requested']}, items a/b = {len(parts['a'])}/{len(parts['b'])}, "
            f"merged {len(merged)}, shared bytes {len(shared)}"
        )
    finally:
        keys = list(server.scan_iter(f"{prefix}:*"))
        if keys:
            server.delete(*keys)


def _write_part(out: Path, worker: str, rows: list[tuple[str, str, int]]) -> None:
    """A worker part with items (item_id, image_url, crawl second), as ``CrawlRecord.write`` does."""
    from datetime import UTC, datetime

    from lora_factory.manifest import write_items, write_table
    from lora_factory.schemas import PAGE_SCHEMA, REJECTED_SCHEMA

    part = out / "parts" / worker
    (part / "images").mkdir(parents=True)
    items = []
    for item_id, url, second in rows:
        (part / "images" / f"{item_id}.png").write_bytes(item_id.encode())
        items.append({
            "item_id": item_id, "image_path": f"images/{item_id}.png", "image_url": url,
            "page_url": "http://x/p.html", "license": "unknown", "topic": "t",
            "crawl_time": datetime(2026, 1, 1, 0, 0, second, tzinfo=UTC), "width": 64,
            "height": 64, "num_bytes": 10, "mime_type": "image/png", "other_urls": [],
        })
    write_items(part / "items.parquet", items)
    write_table(part / "pages.parquet", [], PAGE_SCHEMA)
    write_table(part / "rejected.parquet", [], REJECTED_SCHEMA)
    stats = {"finish_reason": "finished", "images": len(items), "image_urls": len(items),
             "duration_s": 1.0}
    (part / "crawl_stats.json").write_text(__import__("json").dumps(stats), encoding="utf-8")
    (part / "crawl_config.json").write_text(__import__("json").dumps({"worker": worker}), encoding="utf-8")


def test_merge_parts_merges_same_bytes_across_workers(tmp_path: Path) -> None:
    _write_part(tmp_path, "a", [("aa", "http://x/1.png", 2), ("bb", "http://x/2.png", 1)])
    _write_part(tmp_path, "b", [("aa", "http://x/3.png", 1), ("cc", "http://x/4.png", 3)])
    stats = merge_parts(tmp_path)
    items = {row["item_id"]: row for row in read_items(tmp_path / "items.parquet")}
    assert set(items) == {"aa", "bb", "cc"}
    # The earliest copy is kept; the other worker's URL joins other_urls.
    assert items["aa"]["image_url"] == "http://x/3.png"
    assert items["aa"]["other_urls"] == ["http://x/1.png"]
    assert (tmp_path / "crawl_config.json").read_text() == '{"worker": "a"}'  # the run's spec, once
    assert stats["images"] == 3 and stats["byte_duplicates_across_workers"] == 1
    assert stats["image_urls"] == 4
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == ["aa.png", "bb.png", "cc.png"]


def test_run_workers_starts_n_workers_and_merges(tmp_path: Path) -> None:
    """What the crawl task does with crawl.workers=2: two named workers, one merged stage."""
    server = _redis_or_fail()
    prefix = f"lf-test-{uuid.uuid4().hex[:12]}"
    site = generate_demo_site(tmp_path / "site", seed=0)
    lines: list[str] = []
    try:
        hits = StartTogether()
        with serve_site(site.root, hits=hits) as base:
            config = _config(redis_url=REDIS_URL, redis_key_prefix=prefix, workers=2)
            stats = run_workers(site.topic_urls(base), tmp_path / "out", config, config.workers,
                                run_id=f"run-{prefix}", on_progress=lines.append,
                                state_dir=tmp_path / "state")
        items = read_items(tmp_path / "out" / "items.parquet")
        assert stats["images"] == len(items) > 20
        assert set(stats["workers"]) == {"w0", "w1"}
        assert {line.split("]")[0] + "]" for line in lines} == {"[w0]", "[w1]"}
        twice = {p: n for p, n in Counter(hits.paths).items() if n > 1 and p != "/robots.txt"}
        assert not twice, twice
    finally:
        keys = list(server.scan_iter(f"{prefix}:*"))
        if keys:
            server.delete(*keys)


def test_workers_without_redis_is_a_config_error() -> None:
    with pytest.raises(ValueError, match=r"crawl.workers > 1 needs crawl.redis_url"):
        CrawlConfig(workers=2)


# -- killed workers and shared bounds --------------------------------------------------------
def _cleanup(server: Any, prefix: str) -> None:
    keys = list(server.scan_iter(f"{prefix}:*"))
    if keys:
        server.delete(*keys)


def test_popped_requests_stay_in_flight_until_finished_and_can_be_requeued() -> None:
    from scrapy import Request, Spider

    from spiders.frontier import requeue_orphans
    from spiders.inflight import InFlightQueue, requeue
    from spiders.redis_keys import RunKeys

    server = _redis_or_fail()
    prefix = f"lf-test-{uuid.uuid4().hex[:12]}"
    try:
        keys = RunKeys(prefix, "a")
        queue = InFlightQueue(server, Spider(name="t"), keys.queue)
        queue.inflight_key = keys.inflight("a")
        for i in range(3):
            queue.push(Request(f"http://x.example/{i}", priority=i))
        first, second = queue.pop(), queue.pop()
        assert (first.url, second.url) == ("http://x.example/2", "http://x.example/1")
        assert len(queue) == 1 and server.hlen(keys.inflight("a")) == 2
        assert queue.forget_finished({first, second}) == 0  # both still in progress
        assert queue.forget_finished({second}) == 1  # the first is done: its entry goes
        assert server.hlen(keys.inflight("a")) == 1
        # "a" is killed holding the second request; a worker "b" that is alive is left alone.
        other = InFlightQueue(server, Spider(name="t"), keys.queue)
        other.inflight_key = keys.inflight("b")
        other.push(Request("http://x.example/b", priority=10))
        assert other.pop().url == "http://x.example/b"
        server.sadd(keys.workers, "a", "b")
        server.set(keys.alive("b"), 1, px=5000)
        c_keys = RunKeys(prefix, "c")
        assert requeue_orphans(server, c_keys, include_self=False) == 1  # a's, not b's
        assert server.hlen(keys.inflight("a")) == 0 and server.hlen(keys.inflight("b")) == 1
        # The re-queued request keeps its priority: it is popped before the older queued one.
        assert queue.pop().url == "http://x.example/1"
        assert requeue(server, keys.queue, keys.inflight("a")) == 1  # a restarted "a" at start
        assert len(queue) == 2
    finally:
        _cleanup(server, prefix)


def test_a_killed_worker_loses_no_request(tmp_path: Path) -> None:
    """SIGKILL a worker while it has requests in flight; restart it beside a second worker: the
    requests it held are fetched again and the merged crawl equals a one-process crawl."""
    import os
    import signal

    from scrapy_redis import picklecompat

    from spiders.redis_keys import run_key
    from spiders.workers import default_run_id

    server = _redis_or_fail()
    prefix = f"lf-test-{uuid.uuid4().hex[:12]}"
    site = generate_demo_site(tmp_path / "site", seed=0)
    try:
        single = _single_process_paths(site, tmp_path / "single")

        hits = RequestLog()
        out = tmp_path / "distributed"
        config = _config(redis_url=REDIS_URL, redis_key_prefix=prefix)
        workers = _Workers(site, out, config)
        results = workers.results

        with serve_site(site.root, hits=hits) as base2:
            workers.base = base2
            keys = run_key(config, default_run_id(out))
            killed = workers.start("a")
            deadline = time.monotonic() + 90
            while not (len(hits.paths) >= 15 and server.hlen(f"{keys}:inflight:a")):
                assert time.monotonic() < deadline, f"worker a never got going: {hits.paths}"
                assert killed.is_alive(), results.get("a")
                time.sleep(0.02)
            os.kill(int(server.get(f"{keys}:alive:a")), signal.SIGKILL)
            killed.join(timeout=30)
            kill_at = len(hits.paths)
            held = {picklecompat.loads(k)["url"].removeprefix(base2)
                    for k in server.hkeys(f"{keys}:inflight:a")}
            assert held, "the killed worker held no request"
            assert "exit code -9" in str(results["a"])

            workers.run_all("a", "b")

        assert held <= set(hits.paths[kill_at:]), "a request the killed worker held was lost"
        stats = merge_parts(out)
        assert _paths(read_items(out / "items.parquet"), base2) == single
        assert stats["finish_reason"] == "finished"
        assert not list(server.scan_iter(f"{prefix}:*"))
    finally:
        _cleanup(server, prefix)


@pytest.mark.parametrize(("bound", "limit"), [("max_images", 10), ("max_pages", 8)])
def test_bounds_are_the_runs_not_each_workers(tmp_path: Path, bound: str, limit: int) -> None:
    """A bound with two workers: the run keeps that many images (requests that many pages) in
    all; with per-worker counts each worker would."""
    server = _redis_or_fail()
    prefix = f"lf-test-{uuid.uuid4().hex[:12]}"
    site = generate_demo_site(tmp_path / "site", seed=0)
    try:
        with serve_site(site.root, hits=StartTogether()) as base:
            config = _config(redis_url=REDIS_URL, redis_key_prefix=prefix, workers=2,
                             **{bound: limit})
            stats = run_workers(site.topic_urls(base), tmp_path / "out", config, 2,
                                run_id=f"run-{prefix}", state_dir=tmp_path / "state")
        parts = stats["workers"].values()
        counted = "images" if bound == "max_images" else "pages_requested"
        assert sum(p[counted] for p in parts) == limit, [p[counted] for p in parts]
        assert stats[counted] <= limit
        assert all(p["pages_requested"] > 0 for p in parts)  # both took part
    finally:
        _cleanup(server, prefix)
