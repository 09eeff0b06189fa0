"""The registry on a real MLflow SQLite store: the LoRA logged once with the mlflow.diffusers flavor
(base model by reference), aliases candidate/champion/previous, rollback, and the champion loads
with ``mlflow.pyfunc.load_model`` and generates on the tiny pipeline."""

from __future__ import annotations

from pathlib import Path

import pytest

from deploy.registry import (
    MODEL_PATH,
    RegistryError,
    aliases,
    champion_score,
    concept_name,
    flavor_base_model,
    log_lora_model,
    promote,
    register_candidate,
    resolve,
    rollback,
)
from lora_factory.config import DeployConfig
from lora_factory.tracking import Tracker
from training.lora import LORA_WEIGHT_NAME

CFG = DeployConfig()


def _tracker(tmp_path: Path) -> Tracker:
    return Tracker(f"sqlite:///{tmp_path}/mlflow.db", "exp", tmp_path / "mlartifacts")


def _deploy(tracker: Tracker, score: float, win: bool, lora: Path | None = None, base: str = "") -> str:
    """One deploy; the MLflow model is logged only when ``lora`` is given (aliases need no files)."""
    run = tracker.start_stage(tracker.start_parent("p"), "deploy")
    if lora is not None:
        log_lora_model(tracker, run, lora, base, {"trigger_word": "lfstyle"})
    tags = {"overall_score": str(score), "base_model": "tiny:sd", "base_family": "sd15", "trigger_word": "lfstyle"}
    version = register_candidate(tracker, run, "lighthouse", CFG, tags, "test")
    if win:
        promote(tracker, "lighthouse", version, CFG)
    return version


def test_concept_names() -> None:
    assert concept_name("", ["lighthouse"]) == "lighthouse"
    assert concept_name("my-style", ["a", "b"]) == "my-style"
    assert concept_name("", ["rock & roll", "jazz"]).startswith("rock-roll-jazz-")
    with pytest.raises(RegistryError, match="deploy.concept"):
        concept_name(" ", [])


def test_aliases_move_and_rollback_records_why(tmp_path: Path) -> None:
    tracker = _tracker(tmp_path)
    v1 = _deploy(tracker, 0.25, win=True)
    assert aliases(tracker, "lighthouse") == {"candidate": v1, "champion": v1}
    assert champion_score(tracker, "lighthouse") == 0.25
    with pytest.raises(RegistryError, match="no previous version"):
        rollback(tracker, "lighthouse", "bad outputs", CFG)
    v2 = _deploy(tracker, 0.20, win=False)
    assert aliases(tracker, "lighthouse") == {"candidate": v2, "champion": v1}
    v3 = _deploy(tracker, 0.30, win=True)
    assert aliases(tracker, "lighthouse") == {"candidate": v3, "champion": v3, "previous": v1}

    with pytest.raises(RegistryError, match="needs a reason"):
        rollback(tracker, "lighthouse", "  ", CFG)
    record = rollback(tracker, "lighthouse", "users report washed-out colours", CFG)
    assert record == {"concept": "lighthouse", "from_version": v3, "to_version": v1,
                      "reason": "users report washed-out colours"}
    assert aliases(tracker, "lighthouse") == {"candidate": v3, "champion": v1, "previous": v3}
    assert tracker.client.get_model_version("lighthouse", v3).tags["rolled_back"] == record["reason"]
    assert "washed-out" in tracker.client.get_registered_model("lighthouse").tags["lora_factory.rollback"]
    with pytest.raises(RegistryError, match="has no champion"):
        rollback(tracker, "unknown-concept", "x", CFG)


@pytest.mark.e2e
def test_the_champion_is_an_mlflow_model_that_pyfunc_loads_and_generates_with(
        tiny_lora: Path, model_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    import mlflow.pyfunc
    from PIL import Image

    tracker = _tracker(tmp_path)
    base = flavor_base_model("tiny:sd", model_cache)
    assert Path(base).is_dir()
    version = _deploy(tracker, 0.3, win=True, lora=tiny_lora, base=base)
    files = [p for p in (tmp_path / "mlartifacts").rglob("*") if p.is_file()]
    weights = [p for p in files if p.suffix in (".safetensors", ".bin", ".ckpt")]
    assert [p.name for p in weights] == [LORA_WEIGHT_NAME]  # no base weights, no second copy
    assert weights[0].read_bytes() == (tiny_lora / LORA_WEIGHT_NAME).read_bytes()
    assert tracker.client.get_model_version("lighthouse", version).source.endswith(MODEL_PATH)

    got = resolve(tracker, "lighthouse", "champion", tmp_path / "dl")
    assert got.version == version and got.base_ref == "tiny:sd" and got.trigger_word == "lfstyle"
    assert (got.adapter_dir / got.weight_name).is_file()
    with pytest.raises(RegistryError, match="no version with alias 'previous'"):
        resolve(tracker, "lighthouse", "previous")

    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracker.uri)
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", tracker.uri)
    model = mlflow.pyfunc.load_model("models:/lighthouse@champion")
    out = model.predict({"prompt": ["lfstyle a lighthouse"]},
                        params={"num_inference_steps": 2, "height": 64, "width": 64, "guidance_scale": 1.0})
    assert Image.open(io.BytesIO(out[0])).size == (64, 64)


def test_rollback_command(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from cli.app import app

    tracker = _tracker(tmp_path)
    v1, v2 = _deploy(tracker, 0.2, win=True), _deploy(tracker, 0.3, win=True)
    args = ["rollback", "lighthouse", "--tracking-uri", tracker.uri, "--home", str(tmp_path / "home")]
    done = CliRunner().invoke(app, [*args, "--reason", "faces melt"])
    assert done.exit_code == 0, done.output
    assert f"champion v{v2} -> v{v1}" in done.output
    assert aliases(tracker, "lighthouse")["champion"] == v1
    refused = CliRunner().invoke(app, ["rollback", "nope", "--reason", "x", "--tracking-uri", tracker.uri,
                                       "--home", str(tmp_path / "home")])
    assert refused.exit_code == 2 and "error: concept 'nope' has no champion" in refused.output


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.e2e
def test_mlflow_models_serve_answers_on_loopback(tiny_lora: Path, model_cache: Path, tmp_path: Path) -> None:
    import base64
    import io
    import json
    import os
    import signal
    import subprocess
    import sys
    import time
    import urllib.request

    from PIL import Image

    tracker = _tracker(tmp_path)
    _deploy(tracker, 0.3, win=True, lora=tiny_lora, base=flavor_base_model("tiny:sd", model_cache))
    port = _free_port()
    bin_dir = Path(sys.executable).parent  # mlflow runs `uvicorn` from PATH, as in an activated venv
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracker.uri, "MLFLOW_REGISTRY_URI": tracker.uri,
           "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    cmd = [str(bin_dir / "mlflow"), "models", "serve", "-m", "models:/lighthouse@champion",
           "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
           "--timeout", "900"]  # the first request loads the pipeline: slow on a loaded machine
    server = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.DEVNULL,
                              stderr=open(tmp_path / "serve.log", "wb"), start_new_session=True)  # noqa: SIM115
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):  # bounded: up to ~5 minutes to import and load on a loaded machine
            assert server.poll() is None, (tmp_path / "serve.log").read_text()[-2000:]
            try:
                with urllib.request.urlopen(f"{url}/ping", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.5)
        body = {"inputs": {"prompt": ["lfstyle a lighthouse"]},
                "params": {"num_inference_steps": 2, "height": 64, "width": 64, "guidance_scale": 1.0}}
        req = urllib.request.Request(f"{url}/invocations", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=600) as r:
            predictions = json.loads(r.read())["predictions"]
        png = base64.b64decode(predictions[0] if isinstance(predictions[0], str) else predictions[0]["image"])
        assert Image.open(io.BytesIO(png)).size == (64, 64)
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)  # the server we started and its workers
            server.wait(timeout=60)
