"""The serving API over real loopback HTTP: auth, validation, limits and metrics on an in-thread
uvicorn server; adapter swapping, alias moves and SIGKILL persistence on `lora-factory serve`
subprocesses with LoRAs registered in a real MLflow SQLite registry."""

from __future__ import annotations

import http.client
import io
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from deploy.serving.app import build_app
from deploy.serving.feedback_store import FeedbackStore
from deploy.serving.service import make_service
from deploy.serving.triggers import RetrainEvent
from lora_factory.profiles import location_config

from .serve_helpers import (
    random_lora,
    register_champion,
    request,
    serve_in_thread,
    serve_process,
)

TOKEN = "test-token-0123456789abcdef"


def _config(home: Path, **serve: Any) -> Any:
    return location_config({"home": str(home), **{f"serve.{k}": v for k, v in serve.items()}})


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, list[RetrainEvent]]]:
    """A feedback-only service (no model) with small limits, and the events it emitted."""
    home = tmp_path_factory.mktemp("api")
    events: list[RetrainEvent] = []
    cfg = _config(home, max_body_bytes=1024, max_steps=8, rate_per_s=1000, rate_burst=1000,
                  low_rating_min_count=3, new_data_count=5)
    svc = make_service(cfg, TOKEN, emit=events.append, generate=False)
    with serve_in_thread(build_app(svc)) as base:
        yield base, events
    svc.close()


def _feedback(base: str, body: Any, token: str | None = TOKEN) -> tuple[int, dict[str, Any]]:
    status, _, raw = request("POST", f"{base}/feedback", body, token=token)
    return status, json.loads(raw)


def test_feedback_needs_the_bearer_token(api: tuple[str, list]) -> None:
    base, _ = api
    ok = {"run_id": "r1", "concept": "auth", "rating": 4}
    for token in (None, "wrong-token-0123456789abcdef", ""):
        status, body = _feedback(base, ok, token=token)
        assert status == 401 and body == {"error": "missing or wrong bearer token"}
    assert request("POST", f"{base}/admin/refresh", {})[0] == 401
    assert request("GET", f"{base}/admin/feedback/auth")[0] == 401
    status, body = _feedback(base, ok)
    assert status == 201 and body["concept"] == "auth"
    status, _, raw = request("GET", f"{base}/admin/feedback/auth", token=TOKEN)
    assert status == 200 and json.loads(raw)["count"] == 1


@pytest.mark.parametrize(("body", "message"), [
    ({"run_id": "r", "concept": "c", "rating": 0}, "rating: Input should be greater than or equal to 1"),
    ({"run_id": "r", "concept": "c", "rating": 6}, "rating: Input should be less than or equal to 5"),
    ({"run_id": "r", "concept": "c", "rating": "great"}, "rating: Input should be a valid integer"),
    ({"run_id": "r", "rating": 3}, "feedback on a run_id needs the concept"),
    ({"run_id": "r", "generation_id": "g", "concept": "c", "rating": 3}, "exactly one of generation_id or run_id"),
    ({"concept": "c", "rating": 3}, "exactly one of generation_id or run_id"),
    ({"run_id": "r", "concept": "c", "rating": 3, "stars": 5}, "stars: Extra inputs are not permitted"),
])
def test_bad_feedback_is_one_clear_422(api: tuple[str, list], body: dict, message: str) -> None:
    status, answer = _feedback(api[0], body)
    assert status == 422 and message in answer["error"] and "\n" not in answer["error"]


def test_malformed_json_unknown_generation_and_generate_bounds(api: tuple[str, list]) -> None:
    base, _ = api
    status, _, raw = request("POST", f"{base}/feedback", token=TOKEN, raw=b"{not json")
    assert status == 422 and "JSON" in json.loads(raw)["error"]
    status, body = _feedback(base, {"generation_id": "0" * 32, "rating": 3})
    assert status == 404 and "unknown to this server" in body["error"]
    status, _, raw = request("POST", f"{base}/generate", {"prompt": "x", "concept": "c", "steps": 9})
    assert status == 422 and "at most 8 (serve.max_steps)" in json.loads(raw)["error"]
    status, _, raw = request("POST", f"{base}/generate", {"prompt": "", "concept": "c"})
    assert status == 422 and json.loads(raw)["error"].startswith("prompt:")


def test_bodies_over_the_size_limit_get_413_declared_or_streamed(api: tuple[str, list]) -> None:
    base, _ = api
    big = {"run_id": "r", "concept": "size", "rating": 3, "comment": "x" * 2000}
    status, body = _feedback(base, big)
    assert status == 413 and "max_body_bytes" in body["error"]
    host, port = base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    chunks = iter([json.dumps(big).encode()[i:i + 100] for i in range(0, 2100, 100)])
    conn.request("POST", "/feedback", body=chunks, encode_chunked=True,
                 headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 413 and "max_body_bytes" in json.loads(resp.read())["error"]
    conn.close()
    status, _, raw = request("GET", f"{base}/admin/feedback/size", token=TOKEN)
    assert json.loads(raw)["count"] == 0  # nothing of either was stored


def test_rate_limit_answers_429_with_retry_after(tmp_path: Path) -> None:
    cfg = _config(tmp_path, rate_per_s=0.01, rate_burst=3)
    svc = make_service(cfg, TOKEN, emit=lambda e: None, generate=False)
    with serve_in_thread(build_app(svc)) as base:
        answers = [request("POST", f"{base}/feedback", {"run_id": "r", "concept": "rl", "rating": 3},
                           token=TOKEN) for _ in range(4)]
        assert [a[0] for a in answers] == [201, 201, 201, 429]
        assert int(answers[3][1]["retry-after"]) >= 1 and "rate limit" in json.loads(answers[3][2])["error"]
        assert request("GET", f"{base}/health")[0] == 200  # health is never limited
    svc.close()


def test_low_ratings_and_new_data_emit_retrain_events_once(api: tuple[str, list]) -> None:
    """min count 3, new data every 5: a low rating fires once per 3 fresh ratings, not on each."""
    base, events = api
    answers = [_feedback(base, {"run_id": "r", "concept": "trig", "rating": 1,
                                "corrected_caption": "lfstyle, a blue boat"})[1] for _ in range(8)]
    low, new = "lora.feedback.low-rating", "lora.feedback.new-data"
    assert [a["events"] for a in answers] == [[], [], [low], [], [new], [low], [], []]
    mine = [e for e in events if e.concept == "trig"]
    assert [e.event for e in mine] == [low, new, low]
    assert mine[0].payload["mean_rating"] == 1.0 and mine[0].resource()["lora-factory.concept"] == "trig"
    good = [_feedback(base, {"run_id": "r", "concept": "fine", "rating": 5})[1]["events"] for _ in range(4)]
    assert good == [[], [], [], []]


def test_metrics_expose_requests_latency_errors_and_events(api: tuple[str, list]) -> None:
    base, _ = api
    _feedback(base, {"run_id": "r", "concept": "m", "rating": 5})
    status, headers, raw = request("GET", f"{base}/metrics")
    text = raw.decode()
    assert status == 200 and headers["content-type"].startswith("text/plain")
    assert re.search(r'lora_serve_requests_total\{method="POST",route="/feedback",status="201"\} \d', text)
    assert 'lora_serve_request_seconds_bucket{le="0.005",route="/feedback"}' in text
    assert 'lora_serve_feedback_total{concept="m",rating="5"} 1.0' in text
    assert "lora_serve_errors_total" in text


# --- generation, adapter swapping, alias moves: a `lora-factory serve` subprocess ------------


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory, model_cache: Path) -> dict[str, Any]:
    """A home whose MLflow registry has two concepts' champions (random tiny:sd LoRAs)."""
    home = tmp_path_factory.mktemp("serve-home")
    (home / "models").symlink_to(model_cache)
    uri = f"sqlite:///{home / 'mlflow.db'}"
    loras = {name: random_lora(model_cache, home / "loras" / name, seed)
             for name, seed in (("lighthouse", 1), ("sailboat", 2), ("lighthouse-v2", 3))}
    versions = {c: register_champion(uri, home / "mlartifacts", c, loras[c]) for c in ("lighthouse", "sailboat")}
    return {"home": home, "uri": uri, "loras": loras, "versions": versions}


def _alone(model_cache: Path, loras: list[Path], prompt: str, seed: int, steps: int) -> list[np.ndarray]:
    """Each LoRA's image with only it loaded on the base pipeline, the plain diffusers way."""
    from deploy.serving.adapters import load_base, render

    pipe = load_base("tiny:sd", model_cache, "cpu")
    out = []
    for lora in loras:
        pipe.load_lora_weights(str(lora.parent), weight_name=lora.name)
        out.append(_pixels(render(pipe, prompt, seed, steps, "cpu")))
        pipe.unload_lora_weights()
    return out


def _pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16)


def _generate(base: str, concept: str, seed: int = 3) -> tuple[dict[str, str], np.ndarray]:
    status, headers, raw = request("POST", f"{base}/generate",
                                   {"prompt": "lfstyle, a shape", "concept": concept, "seed": seed, "steps": 2},
                                   timeout=900)  # the first loads torch, diffusers and the pipeline
    assert status == 200, raw[:500]
    assert headers["content-type"] == "image/png"
    return headers, _pixels(raw)


@pytest.mark.e2e
def test_adapters_swap_per_request_and_follow_the_alias(registry: dict[str, Any], model_cache: Path) -> None:
    home, loras = registry["home"], registry["loras"]
    with serve_process(home, TOKEN, "serve.alias_refresh_s=0") as (base, _):
        h1, light = _generate(base, "lighthouse")
        h2, sail = _generate(base, "sailboat")
        _, light_again = _generate(base, "lighthouse")
        assert h1["x-model-version"] == registry["versions"]["lighthouse"] and h2["x-concept"] == "sailboat"
        assert np.abs(light - sail).max() > 20  # two different adapters, visibly
        assert np.array_equal(light, light_again)  # swapping back restores the first exactly
        ref = _alone(model_cache, [loras[c] for c in ("lighthouse", "sailboat", "lighthouse-v2")],
                     "lfstyle, a shape", 3, 2)
        assert np.abs(light - ref[0]).max() <= 1 and np.abs(sail - ref[1]).max() <= 1

        moved = register_champion(registry["uri"], home / "mlartifacts", "lighthouse", loras["lighthouse-v2"])
        h3, light_v2 = _generate(base, "lighthouse")
        assert h3["x-model-version"] == moved != h1["x-model-version"]  # no restart needed
        assert np.abs(light_v2 - ref[2]).max() <= 1

        status, _, raw = request("POST", f"{base}/generate", {"prompt": "x", "concept": "nothing", "steps": 2})
        assert status == 404 and "has no champion" in json.loads(raw)["error"]
        fb = request("POST", f"{base}/feedback", {"generation_id": h3["x-generation-id"], "rating": 2,
                                                  "corrected_caption": "lfstyle, a lighthouse"}, token=TOKEN)
        assert fb[0] == 201 and json.loads(fb[2])["concept"] == "lighthouse"
        store = FeedbackStore(f"sqlite:///{home / 'feedback.db'}")  # the served PNG, kept for a retrain
        try:
            assert np.array_equal(_pixels(store.generation_png(h3["x-generation-id"]) or b""), light_v2)
        finally:
            store.close()
        health = json.loads(request("GET", f"{base}/health")[2])
        assert health["served"] == {"lighthouse": moved, "sailboat": registry["versions"]["sailboat"]}
        metrics = request("GET", f"{base}/metrics")[2].decode()
        assert f'lora_serve_model_version{{concept="lighthouse"}} {float(moved)}' in metrics




@pytest.mark.e2e
def test_answered_feedback_survives_a_sigkilled_server(tmp_path: Path, feedback_db_url: str) -> None:
    home = tmp_path / "home"
    with serve_process(home, TOKEN, feedback_url=feedback_db_url) as (base, proc):
        ids = [json.loads(request("POST", f"{base}/feedback", {"run_id": f"r{i}", "concept": "kill",
                                                                "rating": 1 + i % 5}, token=TOKEN)[2])["id"]
               for i in range(40)]
        proc.kill()  # SIGKILL: no shutdown hook runs
        proc.wait(60)
    assert len(set(ids)) == 40
    with serve_process(home, TOKEN, feedback_url=feedback_db_url) as (base, _):
        status, _, raw = request("GET", f"{base}/admin/feedback/kill", token=TOKEN)
        assert status == 200 and json.loads(raw)["count"] == 40
    assert "LORA_FACTORY_SERVE_TOKEN" not in os.environ  # the token went to the child only
    assert TOKEN not in "".join(p.read_text() for p in home.glob("serve-*.log"))


@pytest.mark.parametrize(("token", "sets", "message"), [
    ("", [], "error: set LORA_FACTORY_SERVE_TOKEN to a bearer token of at least 16 characters"),
    (TOKEN, ["serve.feedback_url=not a url"], "error: serve.feedback_url = 'not a url' is not a database URL"),
    (TOKEN, ["serve.port=99999"], "error: config error"),
])
def test_serve_refuses_bad_settings_in_one_line(tmp_path: Path, token: str, sets: list[str], message: str) -> None:
    import subprocess
    import sys

    args = [str(Path(sys.executable).parent / "lora-factory"), "serve", "--home", str(tmp_path)]
    for s in sets:
        args += ["--set", s]
    env = {**os.environ, "LORA_FACTORY_SERVE_TOKEN": token}
    proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and proc.stderr.startswith(message), proc.stderr[-2000:]
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
