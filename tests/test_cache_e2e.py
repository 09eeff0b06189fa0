"""Two flow runs at once in one home, one killed during training, then re-run: the acceptance
test of cached re-runs (issue 15).

Run A (lighthouse) and run B (sailboat) start together through the real CLI and share the
home's model cache, feature cache and MLflow database. A is SIGKILLed once its training has
written a checkpoint; B must still finish, with files of its own. A is then re-run: crawl,
curate, label and tune are cache hits (their histories do not move), training continues from
its checkpoint, and the run ends done.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

CLI = Path(sys.executable).parent / "lora-factory"
# A small crawl keeps each of the three runs short; training long enough to be killed mid-way.
TRAIN = ["--max-images", "40", "--set", "train.max_steps=24", "--set", "train.checkpoint_every=4"]

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1800)]  # three tiny factory runs


def start(topic: str, home: Path, cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([str(CLI), "run", "-t", topic, "--home", str(home), *TRAIN], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def run_of(home: Path, topic: str) -> Path | None:
    for run_dir in sorted((home / "runs").glob("*")) if (home / "runs").is_dir() else []:
        try:
            if json.loads((run_dir / "run.json").read_text())["topics"] == [topic]:
                return run_dir
        except (OSError, ValueError, KeyError):
            continue  # being written
    return None


def checkpoints(run_dir: Path) -> list[Path]:
    """Training checkpoints of the run's unfinished train stage (its scratch folder)."""
    return [p for p in (run_dir / ".scratch" / "train" / "checkpoints").glob("*") if p.is_dir()]


def wait_for_checkpoint(proc: subprocess.Popen[str], home: Path) -> Path:
    """Poll (bounded: the run finishing or failing first ends the wait) until A has a checkpoint."""
    for _ in range(3600):
        run_dir = run_of(home, "lighthouse")
        if run_dir is not None and checkpoints(run_dir):
            return run_dir
        if proc.poll() is not None:
            raise AssertionError(f"run A ended before a checkpoint: {proc.stderr.read()[-3000:]}")
        time.sleep(0.5)
    raise AssertionError("no checkpoint after 30 minutes")


def history(state: dict, stage: str) -> list[str]:
    return [h["status"] for h in state["stages"][stage]["history"]]


@pytest.fixture(scope="module")
def killed_and_rerun(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("cache")
    home = tmp / "home"
    a, b = start("lighthouse", home, tmp), start("sailboat", home, tmp)
    try:
        run_a = wait_for_checkpoint(a, home)
        os.killpg(a.pid, signal.SIGKILL)
        a.wait(timeout=60)
        b_out, b_err = b.communicate(timeout=1800)
    finally:
        for proc in (a, b):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    killed = json.loads((run_a / "run.json").read_text())
    rerun = subprocess.run([str(CLI), "run", "--resume", run_a.name, "--home", str(home)], cwd=tmp,
                           capture_output=True, text=True, timeout=1800)
    return {"home": home, "run_a": run_a, "run_b": run_of(home, "sailboat"), "killed": killed,
            "b": (b.returncode, b_out, b_err), "rerun": rerun}


def test_the_other_run_finishes_with_files_of_its_own(killed_and_rerun: dict) -> None:
    code, out, err = killed_and_rerun["b"]
    assert code == 0, err[-3000:]
    run_a, run_b = killed_and_rerun["run_a"], killed_and_rerun["run_b"]
    assert run_b is not None and run_b != run_a
    state = json.loads((run_b / "run.json").read_text())
    assert state["status"] == "done" and state["topics"] == ["sailboat"]
    (lora,) = (run_b / "train" / "lora").glob("*kohya*.safetensors")
    assert lora.stat().st_size > 0
    items = (run_b / "crawl" / "items.parquet")
    import pyarrow.parquet as pq

    assert set(pq.read_table(items).column("topic").to_pylist()) == {"sailboat"}


def test_the_rerun_skips_finished_stages_and_training_continues_from_its_checkpoint(killed_and_rerun: dict) -> None:
    rerun, killed = killed_and_rerun["rerun"], killed_and_rerun["killed"]
    assert killed["stages"]["train"]["status"] == "running"  # SIGKILL: nobody recorded an end
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    state = json.loads((killed_and_rerun["run_a"] / "run.json").read_text())
    assert state["status"] == "done"
    for stage in ("crawl", "curate", "label", "tune"):
        assert state["stages"][stage]["cache"]["decision"] == "hit", stage
        assert history(state, stage) == history(killed, stage)  # not run again
    assert state["stages"]["train"]["cache"]["decision"] == "miss"
    assert state["stages"]["train"]["cache"]["reason"].startswith("was running")
    args = json.loads((killed_and_rerun["run_a"] / "train" / "lora" / "training_args.json").read_text())
    assert args["resumed_from"] and 0 < args["resumed_from"] < 24
    for stage in ("train", "evaluate", "deploy"):
        assert state["stages"][stage]["status"] == "done"
