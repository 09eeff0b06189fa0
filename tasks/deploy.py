"""Deploy: register the LoRA in the MLflow model registry and move aliases through the gate.

Like a model-promotion pipeline: every trained adapter becomes a new registered version with the
``candidate`` alias; it takes the ``champion`` alias only when its CLIP-T beats the base model's
by the configured margin (and, when there is a champion already, is not worse than it).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from lora_factory.config import DeployConfig
from lora_factory.context import RunRef, run_stage
from lora_factory.tracking import Tracker

from ._prefect import stage_task

STAGE = "deploy"


@dataclass
class GateDecision:
    promote: bool
    reason: str
    clip_t_delta: float
    clip_t_lora: float
    champion_clip_t: float | None


def gate(eval_result: dict[str, Any], cfg: DeployConfig, champion_clip_t: float | None) -> GateDecision:
    """Pure decision: promote if LoRA CLIP-T - base CLIP-T >= margin and not below the champion."""
    delta = float(eval_result["clip_t_delta"])
    lora = float(eval_result["lora"]["clip_t_mean"])
    if delta < cfg.min_clip_t_delta:
        return GateDecision(False, f"CLIP-T delta {delta:+.4f} < required {cfg.min_clip_t_delta:+.4f}",
                            delta, lora, champion_clip_t)
    if champion_clip_t is not None and lora < champion_clip_t:
        return GateDecision(False, f"CLIP-T {lora:.4f} below the champion's {champion_clip_t:.4f}",
                            delta, lora, champion_clip_t)
    return GateDecision(True, f"CLIP-T delta {delta:+.4f} >= {cfg.min_clip_t_delta:+.4f}",
                        delta, lora, champion_clip_t)


def champion_score(tracker: Tracker, cfg: DeployConfig) -> float | None:
    version = tracker.alias_version(cfg.registered_model_name, cfg.champion_alias)
    if version is None:
        return None
    mv = tracker.client.get_model_version(cfg.registered_model_name, version)
    value = mv.tags.get("clip_t_lora")
    return float(value) if value is not None else None


def run_deploy(
    tracker: Tracker,
    mlflow_run_id: str,
    lora_dir: Path,
    eval_result: dict[str, Any],
    cfg: DeployConfig,
    tags: dict[str, str],
    out: Path,
) -> dict[str, Any]:
    """Log the adapter, register a version, apply the gate, write ``decision.json``."""
    tracker.log_artifacts(mlflow_run_id, lora_dir, "lora")
    decision = gate(eval_result, cfg, champion_score(tracker, cfg))
    version = tracker.register(
        cfg.registered_model_name,
        mlflow_run_id,
        "lora",
        tags={**tags, "clip_t_lora": f"{decision.clip_t_lora:.6f}",
              "clip_t_delta": f"{decision.clip_t_delta:.6f}"},
        description=f"LoRA for {tags.get('topics', '?')}: {decision.reason}",
    )
    tracker.set_alias(cfg.registered_model_name, cfg.candidate_alias, version)
    if decision.promote:
        tracker.set_alias(cfg.registered_model_name, cfg.champion_alias, version)
    record = {
        "registered_model": cfg.registered_model_name,
        "version": version,
        "aliases": [cfg.candidate_alias] + ([cfg.champion_alias] if decision.promote else []),
        "model_uri": f"models:/{cfg.registered_model_name}/{version}",
        **asdict(decision),
    }
    (out / "decision.json").write_text(json.dumps(record, indent=2))
    return record


@stage_task(STAGE)
def deploy_task(ref: RunRef) -> dict[str, Any]:
    with run_stage(ref, STAGE) as st:
        cfg = st.config.deploy
        st.log_params(cfg.model_dump())
        eval_result = json.loads((st.input("evaluate") / "eval.json").read_text())
        tags = {"lora_factory.run_id": ref.run_id, "topics": ", ".join(ref.topics),
                "base_model": st.config.models.base, "trigger_word": st.config.label.trigger_word}
        record = run_deploy(st.tracker, st.mlflow_run_id, st.input("train") / "lora", eval_result,
                            cfg, tags, st.out)
        st.log_metrics({"promoted": float(record["promote"]), "model_version": float(record["version"])})
        st.log_artifact(st.out / "decision.json")
    return record
