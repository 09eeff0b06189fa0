"""What the per-family end-to-end tests share: one factory run on the demo site with a tiny
profile, and a generation through the serving API with that run's adapter as champion."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from tests.serve_helpers import request, serve_process

CLI = Path(sys.executable).parent / "lora-factory"
STAGES = ("crawl", "curate", "label", "tune", "train", "evaluate", "deploy")


def run_factory(tmp: Path, profile: str) -> dict:
    """``lora-factory run -t lighthouse`` with ``profile`` on the smallest crawl that trains."""
    home = tmp / "home"
    done = subprocess.run([str(CLI), "run", "-t", "lighthouse", "--profile", profile, "--home", str(home),
                           "--max-images", "10"], cwd=tmp, capture_output=True, text=True, timeout=2400)
    assert done.returncode == 0, done.stderr[-3000:]
    run_dir = next((home / "runs").iterdir())
    return {"home": home, "run_dir": run_dir, "state": json.loads((run_dir / "run.json").read_text())}


def stage_statuses(state: dict) -> dict[str, str]:
    return {s: state["stages"][s]["status"] for s in STAGES}


def generate_with_champion(home: Path, token: str, experiment: str) -> np.ndarray:
    """Promote the run's candidate (what deploy does when the gate passes) and generate with it."""
    from deploy.serving.champion import CHAMPION_ALIAS, registered_model_for
    from lora_factory.tracking import Tracker

    uri = f"sqlite:///{home / 'mlflow.db'}"
    tracker = Tracker(uri, experiment, home / "mlartifacts")
    name = registered_model_for("lighthouse")
    version = tracker.client.get_model_version_by_alias(name, "candidate").version
    tracker.set_alias(name, CHAMPION_ALIAS, version)
    with serve_process(home, token, tracking_uri=uri) as (base, _):
        status, _headers, raw = request("POST", f"{base}/generate",
                                        {"prompt": "lfstyle, a lighthouse", "concept": "lighthouse", "seed": 1,
                                         "steps": 2}, token=token, timeout=900)
    assert status == 200, raw[:500]
    return np.asarray(Image.open(io.BytesIO(raw)).convert("RGB"))
