"""Registry + gate against a real MLflow SQLite store: aliases move like a promotion pipeline."""

from __future__ import annotations

import json
from pathlib import Path

from deploy.registry import register_lora
from lora_factory.config import DeployConfig, EvaluateConfig
from lora_factory.schemas import EvalResult
from lora_factory.tracking import Tracker
from tasks.evaluate import judge


def _eval(base: float, lora: float, min_delta: float = 0.01) -> EvalResult:
    result = EvalResult(base_ref="b", family="sd15", lora_path="l", verdict="fail",
                        scores={"adherence_delta": lora - base, "overall_score": lora})
    return judge(result, EvaluateConfig(min_scores={"adherence_delta": min_delta}))


def test_candidate_and_champion_aliases(tmp_path: Path) -> None:
    tracker = Tracker(f"sqlite:///{tmp_path}/mlflow.db", "exp", tmp_path / "artifacts")
    lora = tmp_path / "lora"
    lora.mkdir()
    (lora / "pytorch_lora_weights.safetensors").write_bytes(b"w")
    cfg = DeployConfig(registered_model_name="m")

    def deploy(base: float, score: float) -> dict:
        run = tracker.start_stage(tracker.start_parent("p"), "deploy")
        return register_lora(tracker, run, lora, _eval(base, score), cfg, {"topics": "t"})

    first = deploy(0.20, 0.25)  # beats base by 0.05: champion
    assert first["promote"] and first["aliases"] == ["candidate", "champion"]
    second = deploy(0.20, 0.22)  # beats base, but below the champion's 0.25
    assert not second["promote"] and "does not beat the champion's 0.2500" in second["reason"]
    third = deploy(0.30, 0.305)  # better than the champion, but not by the margin over its base
    assert not third["promote"] and "adherence_delta 0.005 fails >= 0.01" in third["reason"]
    fourth = deploy(0.20, 0.30)
    assert fourth["promote"]
    assert tracker.alias_version("m", "candidate") == fourth["version"] == "4"
    assert tracker.alias_version("m", "champion") == "4"
    source = tracker.client.get_model_version("m", "2").source
    assert source.endswith("/lora")
    assert json.loads(json.dumps(second)) == second  # the record survives JSON (decision.json) unchanged
