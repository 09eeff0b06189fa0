"""The whole factory with ``--profile tiny-flux`` (issue 17), crawl to serve, on the smallest crawl
that trains: every stage done, the Flux LoRA files load through ``load_lora_weights``, and the
serving API generates with the run's adapter as the concept's champion."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.serve_helpers import request, serve_process

CLI = Path(sys.executable).parent / "lora-factory"
STAGES = ("crawl", "curate", "label", "tune", "train", "evaluate", "deploy")
TOKEN = "flux-e2e-token-0123456789"  # the server wants 16 characters or more

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def flux_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("e2e-flux")
    home = tmp / "home"
    done = subprocess.run([str(CLI), "run", "-t", "lighthouse", "--profile", "tiny-flux", "--home", str(home),
                           "--max-images", "10"], cwd=tmp, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]
    run_dir = next((home / "runs").iterdir())
    return {"home": home, "run_dir": run_dir, "state": json.loads((run_dir / "run.json").read_text())}


def test_a_tiny_flux_run_reaches_deploy(flux_run: dict) -> None:
    state = flux_run["state"]
    assert {s: state["stages"][s]["status"] for s in STAGES} == dict.fromkeys(STAGES, "done")
    assert state["config"]["models"]["base_family"] == "flux"


def test_the_flux_lora_files_load_in_diffusers(flux_run: dict) -> None:
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import load_file

    from lora_factory.models import load_pipeline
    from training.export_kohya import KOHYA_WEIGHT_NAME
    from training.lora import LORA_WEIGHT_NAME

    lora_dir = next(p.parent for p in flux_run["run_dir"].rglob(LORA_WEIGHT_NAME))
    saved = set(load_file(str(lora_dir / LORA_WEIGHT_NAME)))
    for name in (LORA_WEIGHT_NAME, KOHYA_WEIGHT_NAME):
        assert (lora_dir / name).is_file(), name
    pipe = load_pipeline("tiny:flux", None, flux_run["home"] / "models")
    pipe.load_lora_weights(str(lora_dir), weight_name=LORA_WEIGHT_NAME, adapter_name="x")
    loaded = {f"transformer.{k}" for k in get_peft_model_state_dict(pipe.transformer, adapter_name="x")}
    assert loaded == saved  # no missing keys


def test_the_serving_api_generates_with_the_flux_champion(flux_run: dict) -> None:
    from deploy.serving.champion import CHAMPION_ALIAS, registered_model_for
    from lora_factory.tracking import Tracker

    home = flux_run["home"]
    uri = f"sqlite:///{home / 'mlflow.db'}"
    tracker = Tracker(uri, "flux-e2e", home / "mlartifacts")
    name = registered_model_for("lighthouse")
    version = tracker.client.get_model_version_by_alias(name, "candidate").version
    tracker.set_alias(name, CHAMPION_ALIAS, version)  # what deploy does when the gate promotes
    with serve_process(home, TOKEN, tracking_uri=uri) as (base, _):
        status, headers, raw = request("POST", f"{base}/generate",
                                       {"prompt": "lfstyle, a lighthouse", "concept": "lighthouse", "seed": 1,
                                        "steps": 2}, token=TOKEN, timeout=900)
    assert status == 200, raw[:500]
    image = np.asarray(Image.open(io.BytesIO(raw)).convert("RGB"))
    assert image.ndim == 3 and image.std() > 0
