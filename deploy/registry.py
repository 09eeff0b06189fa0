"""Register adapters in the MLflow model registry and move the aliases the gate decides."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from lora_factory.catalog import TRAIN_LORA
from lora_factory.config import DeployConfig
from lora_factory.schemas import EvalResult
from lora_factory.tracking import Tracker

from .gate import gate

SCORE_TAG = "overall_score"
ARTIFACT_PATH = TRAIN_LORA.path  # the adapter's folder: the same name in the run dir and in MLflow


def champion_score(tracker: Tracker, cfg: DeployConfig) -> float | None:
    """The overall score the current champion version was registered with, if there is one."""
    version = tracker.alias_version(cfg.registered_model_name, cfg.champion_alias)
    if version is None:
        return None
    value = tracker.client.get_model_version(cfg.registered_model_name, version).tags.get(SCORE_TAG)
    return float(value) if value not in (None, "", "None") else None


def register_lora(
    tracker: Tracker,
    mlflow_run_id: str,
    lora_dir: Path,
    eval_result: EvalResult,
    cfg: DeployConfig,
    tags: dict[str, str],
) -> dict[str, Any]:
    """Log the adapter to ``mlflow_run_id``, register it as a new version, apply the gate.

    Returns the record written to ``deploy/decision.json``.
    """
    tracker.log_artifacts(mlflow_run_id, lora_dir, ARTIFACT_PATH)
    decision = gate(eval_result, champion_score(tracker, cfg))
    scores = {k: f"{v:.6f}" for k, v in eval_result.scores.items() if v is not None}
    version = tracker.register(
        cfg.registered_model_name,
        mlflow_run_id,
        ARTIFACT_PATH,
        tags={**tags, **scores, "verdict": eval_result.verdict},
        description=f"LoRA for {tags.get('topics', '?')}: {decision.reason}",
    )
    tracker.set_alias(cfg.registered_model_name, cfg.candidate_alias, version)
    if decision.promote:
        tracker.set_alias(cfg.registered_model_name, cfg.champion_alias, version)
    return {
        "registered_model": cfg.registered_model_name,
        "version": version,
        "aliases": [cfg.candidate_alias] + ([cfg.champion_alias] if decision.promote else []),
        "model_uri": f"models:/{cfg.registered_model_name}/{version}",
        **asdict(decision),
    }
