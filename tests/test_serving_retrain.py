"""Retrain triggers end to end: low ratings sent to `lora-factory serve` become a Prefect event,
and the `retrain` deployment's trigger (prefect.yaml) on a real Prefect server on loopback creates
a flow run for that concept. Also what the retrain run takes from the feedback."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from deploy.serving.feedback_store import FeedbackStore
from deploy.serving.retrain_plan import retrain_plan
from lora_factory.feedback_samples import read_samples
from lora_factory.profiles import load_config
from lora_factory.schemas import CaptionStats
from tasks.evaluate.task import run_prompts

from .serve_helpers import ROOT, free_port, request, serve_process, stop_process, wait_for

BIN = Path(sys.executable).parent
TOKEN = "retrain-token-0123456789"


def test_low_rated_prompts_join_the_evaluation_prompts(tmp_path: Path) -> None:
    store = FeedbackStore(f"sqlite:///{tmp_path / 'fb.db'}")
    try:
        bad = store.add_generation("boat", "1", "a {red} boat at night", 1, 2)
        good = store.add_generation("boat", "1", "a boat", 1, 2)
        store.add_feedback("boat", 1, generation_id=bad.id, corrected_caption="lfstyle, a red boat")
        store.add_feedback("boat", 2, generation_id=bad.id)
        store.add_feedback("boat", 5, generation_id=good.id)
        store.add_feedback("boat", 1, run_id="r9")  # no prompt to add
        cfg = load_config("tiny")
        plan = retrain_plan(store, "boat", "lora.feedback.low-rating", cfg)
    finally:
        store.close()
    assert plan.ratings == 4 and plan.mean_rating == 2.25 and plan.corrected_captions == 1
    assert plan.low_prompts == ["a {red} boat at night"]
    prompts = plan.overrides["evaluate.prompts"]
    assert prompts[:-1] == cfg.evaluate.prompts and prompts[-1] == "a {{red}} boat at night"
    assert prompts[-1].format(topic="x", trigger="y") == "a {red} boat at night"
    assert load_config("tiny", plan.overrides).evaluate.prompts == prompts  # a valid override
    stats = CaptionStats(num_images=3, captioned=3, coverage=1, words_mean=3, words_median=3, words_max=4,
                         trigger_word="lfstyle")
    rendered = run_prompts(load_config("tiny", plan.overrides), stats, ["boat"], [])
    assert [p.text for p in rendered if p.text == "a {red} boat at night"] == ["a {red} boat at night"]


def _png(shade: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (shade, 40, 90)).save(buf, format="PNG")
    return buf.getvalue()


def test_well_rated_corrected_captions_become_feedback_samples(tmp_path: Path) -> None:
    store = FeedbackStore(f"sqlite:///{tmp_path / 'fb.db'}")
    try:
        good = store.add_generation("boat", "3", "lfstyle, a boat", 1, 2, png=_png(10))
        poor = store.add_generation("boat", "3", "lfstyle, a ship", 2, 2, png=_png(20))
        unkept = store.add_generation("boat", "3", "lfstyle, a raft", 3, 2)  # serve.keep_images off
        store.add_feedback("boat", 4, generation_id=good.id, corrected_caption="an old caption")
        store.add_feedback("boat", 5, generation_id=good.id, corrected_caption="lfstyle,  a red boat")
        store.add_feedback("boat", 1, generation_id=poor.id, corrected_caption="lfstyle, a ship")
        store.add_feedback("boat", 5, generation_id=unkept.id, corrected_caption="lfstyle, a raft")
        store.add_feedback("boat", 5, run_id="r1", corrected_caption="no image to attach it to")
        cfg = load_config("tiny")
        plan = retrain_plan(store, "boat", "lora.feedback.new-data", cfg, tmp_path / "samples")
        again = retrain_plan(store, "boat", "lora.feedback.new-data", cfg, tmp_path / "samples")
    finally:
        store.close()
    assert plan.corrected_captions == 5 and plan.samples == 1
    assert again.samples_dir == plan.samples_dir  # the same feedback: the same folder (label's cache holds)
    assert load_config("tiny", plan.overrides).label.feedback_dir == plan.samples_dir
    ((sample, image),) = read_samples(plan.samples_dir)
    assert image.read_bytes() == _png(10)  # the image that was served
    assert (sample.caption, sample.generation_id, sample.rating) == ("lfstyle, a red boat", good.id, 5)
    assert plan.low_prompts == ["lfstyle, a ship"]


def _prefect(api: str, *args: str, env: dict[str, str]) -> None:
    proc = subprocess.run([str(BIN / "prefect"), "--no-prompt", *args], cwd=ROOT,
                          env={**env, "PREFECT_API_URL": api}, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (args, proc.stdout[-2000:], proc.stderr[-2000:])


@pytest.fixture(scope="module")
def prefect_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Prefect server on loopback with the `retrain` deployment of prefect.yaml (no worker:
    the trigger's flow run is created and stays scheduled)."""
    tmp = tmp_path_factory.mktemp("prefect")
    port = free_port()
    env = {**{k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"},
           "PREFECT_HOME": str(tmp / "prefect-home"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "COLUMNS": "200"}
    log = (tmp / "server.log").open("wb")
    proc = subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    api = f"http://127.0.0.1:{port}/api"
    try:
        wait_for(f"{api}/health", proc, timeout_s=300)
        _prefect(api, "work-pool", "create", "lora-factory", "--type", "process", "--overwrite", env=env)
        _prefect(api, "deploy", "--name", "retrain", env=env)
        yield api
    finally:
        stop_process(proc, 60)
        log.close()


def _retrain_runs(api: str) -> list[dict]:
    deployments = json.loads(request("POST", f"{api}/deployments/filter",
                                     {"deployments": {"name": {"any_": ["retrain"]}}})[2])
    assert len(deployments) == 1
    body = {"deployments": {"id": {"any_": [deployments[0]["id"]]}}}
    return json.loads(request("POST", f"{api}/flow_runs/filter", body)[2])


@pytest.mark.e2e
def test_a_low_rating_burst_starts_a_retrain_flow_run(prefect_api: str, tmp_path: Path) -> None:
    automations = json.loads(request("POST", f"{prefect_api}/automations/filter", {})[2])
    assert any("retrain" in a["name"] for a in automations), [a["name"] for a in automations]
    assert _retrain_runs(prefect_api) == []
    with serve_process(tmp_path / "home", TOKEN, "serve.low_rating_min_count=3",
                       env={"PREFECT_API_URL": prefect_api}) as (base, _):
        answers = [json.loads(request("POST", f"{base}/feedback",
                                      {"run_id": "r1", "concept": "sailboat", "rating": 1}, token=TOKEN)[2])
                   for _ in range(3)]
        assert answers[-1]["events"] == ["lora.feedback.low-rating"]
        deadline = time.monotonic() + 180
        runs: list[dict] = []
        while not runs and time.monotonic() < deadline:
            time.sleep(1)
            runs = _retrain_runs(prefect_api)
    assert len(runs) == 1, "the trigger created no flow run of the retrain deployment"
    assert runs[0]["parameters"]["concept"] == "sailboat"
    assert runs[0]["parameters"]["reason"] == "lora.feedback.low-rating"


def test_without_a_prefect_api_the_event_is_only_recorded(caplog: pytest.LogCaptureFixture,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from deploy.serving.triggers import LOW_RATING, RetrainEvent, prefect_emitter

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    with caplog.at_level("WARNING"):
        prefect_emitter(RetrainEvent(LOW_RATING, "boat", 3, {}))
    assert "recorded but not sent: no PREFECT_API_URL" in caplog.text
