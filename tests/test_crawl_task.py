"""The crawl task and what it derives from topics and settings: names that MLflow and Redis
accept for any topic a user can type, distributed mode with one worker, a Redis that does not
answer stopped in preflight, and no password from a URL setting in anything the crawl writes."""

from __future__ import annotations

import json
import random
import socket
import unicodedata
import uuid
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import redis

from lora_factory.config import CrawlConfig
from lora_factory.errors import ConfigError
from lora_factory.lifecycle import check_services, start_run
from lora_factory.names import topic_key
from lora_factory.profiles import load_config
from lora_factory.tracking import Tracker
from spiders.bounds import SharedBounds
from spiders.redis_keys import RunKeys
from spiders.spec import CrawlSpec
from tasks.crawl import crawl_metrics, crawl_task, seed_params, seed_record

REDIS = "127.0.0.1:6379/0"
PASSWORD = "s3cret-crawl-pw"  # the local Redis has none: redis-py ignores it, so the URL works
NASTY = ["rock & roll", "mario (game)", "C++", "what's up", "🚀 rocket", "../etc", "x" * 10_000,
         "a/b\\c", "  spaced  ", "ümlaut", "lighthouse", "rock-roll"]


def _random_topics(n: int, seed: int = 0) -> list[str]:
    """Printable text of any script (a seeded stand-in for a property-based generator)."""
    rng = random.Random(seed)
    out: list[str] = []
    while len(out) < n:
        chars = [chr(rng.randrange(0x20, 0x2FFFF)) for _ in range(rng.randrange(1, 300))]
        text = "".join(c for c in chars if unicodedata.category(c) not in ("Cc", "Cs", "Co", "Cn"))
        if text.strip():
            out.append(text)
    return out


TOPICS = NASTY + _random_topics(40)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One data folder (and MLflow database: its set-up is the slow part) for this module."""
    return tmp_path_factory.mktemp("home")


def test_topic_keys_are_safe_and_distinct() -> None:
    keys = [topic_key(t) for t in TOPICS]
    assert len(set(keys)) == len(TOPICS)
    assert all(k.isascii() and k.isprintable() and len(k) <= 64 and "/" not in k and ".." not in k
               for k in keys)


def test_mlflow_accepts_every_topic_derived_name(home: Path) -> None:
    """The crawl task's metrics and params for every topic, logged into a real MLflow store."""
    stats = {
        "images": len(TOPICS), "rejections": {"too_small": 2},
        "images_per_topic": {t: i + 1 for i, t in enumerate(TOPICS)},
        "workers": {"w0": {"images": 3, "images_per_topic": {t: 1 for t in TOPICS}}},
    }
    metrics = crawl_metrics(stats)
    seeds = seed_record({t: [f"http://site.test/{i}.html"] for i, t in enumerate(TOPICS)},
                        {t: [{"image_url": "http://site.test/a.png"}] for t in TOPICS})
    uri = load_config("tiny", {"home": str(home)}, environ={}).tracking.uri
    tracker = Tracker(uri, "names", home / "names-artifacts")
    run_id = tracker.start_parent("names")
    tracker.log_metrics(run_id, metrics)
    tracker.log_params(run_id, seed_params(seeds))
    tracker.log_dict(run_id, seeds, "seed_urls.json")
    logged = tracker.client.get_run(run_id).data
    for i, topic in enumerate(TOPICS):
        assert logged.metrics[f"images_per_topic.{topic_key(topic)}"] == i + 1
    assert logged.metrics["rejections.too_small"] == 2 and not any("w0" in k for k in logged.metrics)
    assert set(json.loads(logged.params["seed_urls"])) == {topic_key(t) for t in TOPICS}


def test_shared_bounds_count_any_topic_under_its_key() -> None:
    server = redis.Redis.from_url(f"redis://{REDIS}")
    keys = RunKeys(f"lf-test-{uuid.uuid4().hex[:12]}")
    bounds = SharedBounds(server, keys.counts,
                          CrawlConfig(max_images=1000, max_images_per_topic=1, redis_url=f"redis://{REDIS}"))
    try:
        for topic in TOPICS:
            assert bounds.reserve_image(topic) and bounds.topic_full(topic)
            assert not bounds.reserve_image(topic)
        fields = {f.decode() for f in server.hkeys(keys.counts[1])}
        assert fields == {topic_key(t) for t in TOPICS}
    finally:
        server.delete(*keys.all_fixed())


def test_the_crawl_spec_round_trips_any_topic(tmp_path: Path) -> None:
    spec = CrawlSpec(topics={t: ["http://site.test/"] for t in TOPICS}, out_dir=tmp_path,
                     state_dir=tmp_path / "state", crawl=CrawlConfig())
    assert CrawlSpec.model_validate_json(spec.model_dump_json()) == spec


def test_a_redis_that_does_not_answer_stops_preflight_with_one_line(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once the block ends
    cfg = load_config("tiny", {"home": str(tmp_path / "home"),
                               "crawl.redis_url": f"redis://:{PASSWORD}@127.0.0.1:{port}/0"}, environ={})
    with pytest.raises(ConfigError, match="crawl.redis_url .* does not answer") as err:
        check_services(cfg)
    assert PASSWORD not in str(err.value) and "\n" not in str(err.value)


def _files_text(root: Path) -> str:
    return "\n".join(p.read_text(encoding="utf-8", errors="replace")
                     for p in root.rglob("*") if p.is_file() and p.suffix in (".json", ".jsonl", ".log"))


def test_the_crawl_task_with_redis_one_worker_and_any_topics(home: Path) -> None:
    """crawl.redis_url with the default one worker: the task's merged outputs, MLflow names for
    ordinary topics, and no Redis password in the stage folder or the crawl's MLflow run."""
    prefix = f"lf-test-{uuid.uuid4().hex[:12]}"
    topics = ["rock & roll", "🚀 rocket", "C++"]
    cfg = load_config("tiny", {
        "home": str(home), "crawl.redis_url": f"redis://:{PASSWORD}@{REDIS}",
        "crawl.redis_key_prefix": prefix, "crawl.max_pages": 12,
    }, environ={})
    assert cfg.crawl.workers == 1
    ref = start_run(cfg, topics)
    try:
        stats = crawl_task.fn(ref)
    finally:
        server = redis.Redis.from_url(f"redis://{REDIS}")
        if keys := list(server.scan_iter(f"{prefix}:*")):
            server.delete(*keys)
    run = ref.run_dir()
    out = run.stage_path("crawl")
    assert (out / "parts" / "w0" / "crawl_stats.json").is_file()
    assert json.loads((out / "crawl_stats.json").read_text(encoding="utf-8"))["images"] == stats["images"] > 0
    items = pd.read_parquet(out / "items.parquet")
    assert set(items["topic"]) <= set(topics) and set(stats["images_per_topic"]) <= set(topics)
    # The demo site has no pages about these topics: they start at its index, crawled once.
    crawled: Any = next(iter(stats["images_per_topic"]))
    crawl_run = run.state()["stages"]["crawl"]["mlflow_run_id"]
    logged = ref.tracker().client.get_run(crawl_run).data
    assert logged.metrics[f"images_per_topic.{topic_key(crawled)}"] == stats["images_per_topic"][crawled]
    assert logged.params["redis_url"] == "redis://:***@127.0.0.1:6379/0"
    assert PASSWORD not in json.dumps({**logged.params, **logged.tags})
    assert PASSWORD not in _files_text(out)
    spec = json.loads((out / "parts" / "w0" / "crawl_config.json").read_text(encoding="utf-8"))
    assert spec["crawl"]["redis_url"] == "redis://:***@127.0.0.1:6379/0"


def test_the_crawl_task_reads_a_zip_dataset_with_provenance_and_leaves_it_alone(home: Path, tmp_path: Path) -> None:
    """``run --dataset set.zip`` at the crawl stage: each image an item named by its zip entry,
    with its sidecar caption and the archive's licence.txt, stored byte for byte; junk skipped;
    the zip unchanged. An unsafe zip stops the stage with one line and no items."""
    from lora_factory.errors import StoreError
    from lora_factory.manifest import read_items
    from lora_factory.runstore import FAILED

    from .doctor_data import png_bytes, zip_bytes

    z = tmp_path / "set.zip"
    z.write_bytes(zip_bytes({"2_shapes/a.png": png_bytes(1), "2_shapes/a.txt": b"shapes, a red square",
                             "2_shapes/b.png": png_bytes(2), "licence.txt": b"CC-BY-4.0\nby me\n",
                             "__MACOSX/2_shapes/._a.png": b"\0\5\26\7"}))
    before = z.read_bytes()
    cfg = load_config("tiny", {"home": str(home), "crawl.source": "dataset", "crawl.dataset": str(z)}, environ={})
    ref = start_run(cfg, ["shapes"])
    stats = crawl_task.fn(ref)
    out = ref.run_dir().stage_path("crawl")
    items = {it["image_url"]: it for it in read_items(out / "items.parquet")}
    entry = f"zip:{z.resolve().as_uri()}!/2_shapes/"
    assert set(items) == {entry + "a.png", entry + "b.png"} and stats["layout"] == "kohya"
    a = items[entry + "a.png"]
    assert a["alt_text"] == "shapes, a red square" and a["license"] == "CC-BY-4.0" and a["topic"] == "shapes"
    assert (out / a["image_path"]).read_bytes() == png_bytes(1)
    assert z.read_bytes() == before

    bad = tmp_path / "bad.zip"
    bad.write_bytes(zip_bytes({"2_shapes/a.png": png_bytes(1), "../evil.png": png_bytes(2)}))
    cfg = load_config("tiny", {"home": str(home), "crawl.source": "dataset", "crawl.dataset": str(bad)}, environ={})
    ref = start_run(cfg, ["shapes"])
    with pytest.raises(Exception, match="climbs out") as err:
        crawl_task.fn(ref)
    assert "\n" not in str(err.value) and not (tmp_path / "evil.png").exists()
    run = ref.run_dir()
    assert run.stage_status("crawl") == FAILED
    with pytest.raises(StoreError):  # nothing committed
        run.stage_path("crawl")
