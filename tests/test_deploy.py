"""Registry + gate against a real MLflow SQLite store: aliases move like a promotion pipeline."""

from __future__ import annotations

import json
from pathlib import Path

from deploy.registry import register_lora
from lora_factory.config import DeployConfig
from lora_factory.tracking import Tracker


def _eval(base: float, lora: float) -> dict:
    return {"clip_t_delta": lora - base, "lora": {"clip_t_mean": lora}, "base": {"clip_t_mean": base}}


def test_candidate_and_champion_aliases(tmp_path: Path) -> None:
    tracker = Tracker(f"sqlite:///{tmp_path}/mlflow.db", "exp", tmp_path / "artifacts")
    lora = tmp_path / "lora"
    lora.mkdir()
    (lora / "pytorch_lora_weights.safetensors").write_bytes(b"w")
    cfg = DeployConfig(registered_model_name="m", min_clip_t_delta=0.01)

    def deploy(base: float, score: float) -> dict:
        run = tracker.start_stage(tracker.start_parent("p"), "deploy")
        return register_lora(tracker, run, lora, _eval(base, score), cfg, {"topics": "t"})

    first = deploy(0.20, 0.25)  # beats base by 0.05: champion
    assert first["promote"] and first["aliases"] == ["candidate", "champion"]
    second = deploy(0.20, 0.22)  # beats base, but below the champion's 0.25
    assert not second["promote"] and "below the champion" in second["reason"]
    third = deploy(0.30, 0.305)  # better than the champion, but not by the margin over its base
    assert not third["promote"] and "< required" in third["reason"]
    fourth = deploy(0.20, 0.30)
    assert fourth["promote"]
    assert tracker.alias_version("m", "candidate") == fourth["version"] == "4"
    assert tracker.alias_version("m", "champion") == "4"
    source = tracker.client.get_model_version("m", "2").source
    assert source.endswith("/lora")
    assert json.loads(json.dumps(second)) == second  # the record survives JSON (decision.json) unchanged
