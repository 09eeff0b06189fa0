"""The feedback writer thread (batched commits, answers only after the commit) and the bounded
generation queue (a slow /generate does not hold up /feedback or /health; a full queue is 429)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from deploy.serving.adapters import Image
from deploy.serving.app import build_app
from deploy.serving.feedback_store import FeedbackStore
from deploy.serving.feedback_writer import FeedbackRejected, FeedbackWriter, Rating
from deploy.serving.service import make_service
from lora_factory.config import ServeConfig
from lora_factory.profiles import location_config

from .serve_helpers import request, serve_in_thread

TOKEN = "test-token-0123456789abcdef"


def _until(check: Any, what: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout_s} s")
        time.sleep(0.02)


def test_writer_batches_commits_and_rejects_only_the_bad_rating(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fb.db'}"
    store = FeedbackStore(url)
    gen = store.add_generation("boat", "3", "lfstyle, a boat", 1, 4)
    writer = FeedbackWriter(store, ServeConfig(new_data_count=1000, low_rating_min_count=1000))
    ratings = [Rating(1 + i % 5, "boat", run_id=f"r{i}") for i in range(60)]
    ratings += [Rating(4, generation_id=gen.id), Rating(3, generation_id="f" * 32),
                Rating(2, "sail", generation_id=gen.id)]
    with ThreadPoolExecutor(16) as pool:  # many at once, as concurrent requests hand them over
        futures = list(pool.map(writer.submit, ratings))
    results, errors = [], []
    for f in futures:
        try:
            results.append(f.result(60))
        except FeedbackRejected as e:
            errors.append((e.status, e.message))
    writer.close()
    assert len(results) == 61 and len({w.id for w in results}) == 61
    assert results[-1].concept == "boat"  # the generation's concept
    assert errors == [(404, f"generation_id {'f' * 32!r} is unknown to this server"),
                      (422, "concept 'sail' does not match the generation's 'boat'")]
    fresh = FeedbackStore(url)  # answered means committed: another connection sees every row
    assert fresh.count_feedback("boat") == 61 and fresh.count_feedback("sail") == 0
    fresh.close()
    store.close()


class BlockingPool:
    """An adapter pool whose generation waits for the test to let it finish: a 'slow' generation
    without any timing."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.release = threading.Event()

    def loaded(self) -> dict[str, str]:
        return {"slow": "1"} if self.started.is_set() else {}

    def forget_checks(self) -> None:
        """Nothing cached to forget: the stand-in serves one fixed concept."""

    def generate(self, concept: str, prompt: str, seed: int, steps: int) -> Image:
        self.started.set()
        assert self.release.wait(300), "the test never released the generation"
        return Image(concept, "1", b"\x89PNG fake")


@pytest.fixture()
def blocked(tmp_path: Path) -> Iterator[tuple[str, BlockingPool]]:
    cfg = location_config({"home": str(tmp_path), "serve.generate_queue": 1, "serve.rate_per_s": 0})
    svc = make_service(cfg, TOKEN, emit=lambda e: None, generate=False)
    pool = BlockingPool()
    svc.pool = pool  # type: ignore[assignment]
    with serve_in_thread(build_app(svc)) as base:
        yield base, pool
        pool.release.set()
    svc.close()


def test_feedback_and_health_answer_while_a_generation_runs(blocked: tuple[str, BlockingPool]) -> None:
    base, pool = blocked
    body = {"prompt": "lfstyle, a boat", "concept": "slow", "steps": 2}
    with ThreadPoolExecutor(2) as clients:
        running = clients.submit(request, "POST", f"{base}/generate", body)
        _until(pool.started.is_set, "the generation starting")
        waiting = clients.submit(request, "POST", f"{base}/generate", body)
        _until(lambda: request("GET", f"{base}/health")[0] == 200 and _held(base) == 2, "the second generation queuing")
        # the queue (1 running + serve.generate_queue=1 waiting) is full: refused at once
        status, headers, raw = request("POST", f"{base}/generate", body)
        assert status == 429 and int(headers["retry-after"]) >= 1
        assert "serve.generate_queue" in json.loads(raw)["error"]
        # while the generation still runs, feedback and health are answered
        for i in range(5):
            status, _, raw = request("POST", f"{base}/feedback", {"run_id": f"r{i}", "concept": "slow",
                                                                  "rating": 4}, token=TOKEN)
            assert status == 201, raw
        status, _, raw = request("GET", f"{base}/health")
        assert status == 200 and json.loads(raw)["served"] == {"slow": "1"}
        assert not running.done() and not waiting.done()
        pool.release.set()
        for done in (running.result(300), waiting.result(300)):
            assert done[0] == 200 and done[1]["x-generation-id"]


def _held(base: str) -> int:
    raw = request("GET", f"{base}/metrics")[2].decode()
    line = next((x for x in raw.splitlines() if x.startswith("lora_serve_generate_queue ")), "x 0")
    return int(float(line.split()[1]))
