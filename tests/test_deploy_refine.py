"""The bounded auto-refine loop's decision (deploy/refine.py) on controlled decision records."""

from __future__ import annotations

import json
import math
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from deploy.refine import next_attempt
from lora_factory.profiles import load_config

CLI = Path(sys.executable).parent / "lora-factory"
TRAINED = {"max_steps": 20, "rank": 4, "learning_rate": 1e-3}


def record(verdict: str = "rejected", changes: dict[str, float] | None = None, failed: tuple[str, ...] = ()) -> dict[str, Any]:
    checks = [{"name": n, "passed": False, "detail": "", "skipped": False} for n in failed]
    checks.append({"name": "portability", "passed": True, "detail": "", "skipped": False})
    suggestion = {"changes": changes, "why": ["..."], "text": "..."} if changes is not None else None
    return {"verdict": verdict, "reason": "failed: " + ", ".join(failed), "checks": checks, "suggestion": suggestion}


def cfg(**sets: Any) -> Any:
    return load_config("tiny", {"deploy.refine.attempts": 2, "crawl.max_images": 10, **sets}, environ={})


def test_longer_training_and_more_data_from_the_suggestion() -> None:
    step = next_attempt(record(changes={"max_steps": 1.25, "more_data": 1.5}, failed=("overall_score",)),
                        TRAINED, cfg(), "run-a")
    assert step is not None and step.attempt == 1
    assert step.overrides == {"train.max_steps": 25, "crawl.max_images": 15,
                              "deploy.refine.of": "run-a", "deploy.refine.attempt": 1}
    assert "train.max_steps 20 x1.25" in step.why and "attempt 1 of 2 after run run-a" in step.why[0]
    again = load_config("tiny", {"deploy.refine.attempts": 2, **step.overrides}, environ={})
    assert again.train.max_steps == 25 and "max_steps" in again.tune.pin  # it holds against the tuner


def test_copying_or_mode_collapse_tightens_curation() -> None:
    base = cfg()
    step = next_attempt(record(changes={"max_steps": 0.7, "more_data": 1.5}, failed=("copy_risk",)),
                        TRAINED, base, "run-a")
    assert step is not None
    assert step.overrides["curate.phash_max_distance"] == base.curate.phash_max_distance - 4
    assert step.overrides["curate.text_dedup_threshold"] == pytest.approx(base.curate.text_dedup_threshold - 0.04)
    assert step.overrides["train.max_steps"] == 14
    assert load_config("tiny", step.overrides, environ={}).curate.phash_max_distance < base.curate.phash_max_distance


def test_rank_and_learning_rate_follow_their_factors() -> None:
    step = next_attempt(record(changes={"rank": 2.0, "learning_rate": 0.7}, failed=("fidelity_gain",)),
                        TRAINED, cfg(), "run-a")
    assert step is not None and (step.overrides["train.rank"], step.overrides["train.learning_rate"]) == (8, 0.0007)


@pytest.mark.parametrize(("rec", "sets", "why"), [
    (record("promoted"), {}, "promoted: done"),
    (record(changes={"max_steps": 1.5}), {"deploy.refine.attempts": 0}, "off by default"),
    (record(changes={"max_steps": 1.5}), {"deploy.refine.attempt": 2}, "the last attempt"),
    (record(changes={}), {}, "nothing to change: it would repeat the run"),
    (record(changes=None), {}, "no suggestion"),
    (record(changes={"more_data": 1.5}), {"deploy.refine.max_images_cap": 10}, "more data past the cap"),
])
def test_the_loop_stops(rec: dict, sets: dict, why: str) -> None:
    assert next_attempt(rec, TRAINED, cfg(**sets), "run-a") is None, why


def test_later_attempts_link_to_the_first_run() -> None:
    step = next_attempt(record(changes={"max_steps": 1.5}), TRAINED,
                        cfg(**{"deploy.refine.of": "run-a", "deploy.refine.attempt": 1}), "run-b")
    assert step is not None and step.attempt == 2
    assert (step.overrides["deploy.refine.of"], step.overrides["deploy.refine.attempt"]) == ("run-a", 2)
    assert load_config("tiny", {}, environ={}).deploy.refine.attempts == 0  # off unless asked


@pytest.mark.e2e
def test_a_rejected_run_is_refined_once_in_its_own_linked_run(tmp_path: Path, model_cache: Path) -> None:
    """The smallest real loop: a bar no candidate reaches, one refine attempt, then it stops."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "models").symlink_to(model_cache)  # the session's tiny models, not built again
    sets = ["deploy.gate.min_overall_score=100", "deploy.refine.attempts=1", "train.max_steps=4",
            "evaluate.num_seeds=1", "evaluate.num_inference_steps=2", "label.tagger=keywords"]
    proc = subprocess.run(
        [str(CLI), "run", "-t", "lighthouse", "--max-images", "10", "--home", str(home),
         *[arg for s in sets for arg in ("--set", s)]],
        cwd=tmp_path, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    first, second = sorted((home / "runs").iterdir())  # exactly two runs: the attempt bound holds
    state = {r: json.loads((r / "run.json").read_text()) for r in (first, second)}
    decision = json.loads((first / "deploy" / "decision.json").read_text())
    assert decision["verdict"] == "rejected" and "overall_score" in decision["reason"]
    factor = decision["suggestion"]["changes"]["max_steps"]
    cfg2 = state[second]["config"]
    assert cfg2["deploy"]["refine"] == {"attempts": 1, "max_images_cap": 5000, "of": first.name, "attempt": 1}
    assert cfg2["crawl"]["max_images"] == 15 and cfg2["train"]["max_steps"] == math.floor(4 * factor + 0.5)
    trained = (second / "tune" / "train_config.yaml").read_text()
    assert f"max_steps: {cfg2['train']['max_steps']}" in trained  # the tuner kept the attempt's value
    assert json.loads((second / "deploy" / "decision.json").read_text())["verdict"] == "rejected"
    with sqlite3.connect(home / "mlflow.db") as con:
        tags = dict(con.execute("SELECT key, value FROM tags WHERE key LIKE 'lora_factory.refine%'").fetchall())
    assert tags == {"lora_factory.refine_of": first.name, "lora_factory.refine_attempt": "1"}
    assert f"refine #1    run {second.name}: rejected" in proc.stdout  # the summary names the attempt's run


def test_the_run_summary_names_every_refine_attempt() -> None:
    from cli.run import refine_lines

    result = {"run_id": "a", "refined": {"run_id": "b", "run_dir": "/r/b", "deploy": {"verdict": "rejected"},
                                         "refined": {"attempt": 2, "error": "crawl: nothing found"}}}
    assert refine_lines(result) == ["  refine #1    run b: rejected (/r/b)", "  refine #2    failed: crawl: nothing found"]
    assert refine_lines({"run_id": "a"}) == []
