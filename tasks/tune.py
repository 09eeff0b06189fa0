"""Tune: the training config for this dataset, its model family and the GPU budget (LoRATuner),
with the reason for every value.

Reads curate's ``stats.json`` and label's ``caption_stats.json`` through the catalog, asks the
tracking store for similar past runs (``tune.history``), writes ``train_config.yaml`` and
``rationale.md``, and logs the dataset's features, the family and the chosen values so later
runs can learn from this one (``training.tuner.history``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lora_factory.catalog import (
    CURATE_STATS,
    LABEL_CAPTION_STATS,
    TUNE_RATIONALE,
    TUNE_TRAIN_CONFIG,
)
from lora_factory.config import FactoryConfig
from lora_factory.context import RunRef, run_stage
from lora_factory.schemas import CaptionStats, CurateStats
from training.tuner import (
    PastRun,
    Recommendation,
    family_for,
    headline,
    load_history,
    markdown,
    recommend,
    request_for,
    stats_from,
)
from training.tuner.history import FEATURE_PREFIX, VALUE_PREFIX

from ._prefect import stage_task

STAGE = "tune"


def run_tune(curate_stats: CurateStats, caption_stats: CaptionStats, cfg: FactoryConfig, out: Path,
             history: list[PastRun] | None = None) -> Recommendation:
    """Recommend and write ``train_config.yaml`` and ``rationale.md`` into ``out``."""
    family = family_for(cfg.models.base_family, cfg.models.base)
    request = request_for(cfg, stats_from(curate_stats, caption_stats), family, history or [])
    rec = recommend(request, cfg.tune.strategy)
    TUNE_TRAIN_CONFIG.write(out, rec.config)
    TUNE_RATIONALE.write(out, markdown(rec))
    return rec


def past_runs(cfg: FactoryConfig, exclude_parent: str | None) -> list[PastRun]:
    """Scored past runs of this run's family, when history is on and the strategy uses it."""
    if not cfg.tune.history or cfg.tune.strategy != "auto":
        return []
    family = family_for(cfg.models.base_family, cfg.models.base)
    return load_history(cfg.tracking.uri, cfg.tracking.experiment, family.name, exclude_parent)


def tracked_params(rec: Recommendation) -> dict[str, Any]:
    """What later runs' history reads back: family, task, strategy and every chosen value."""
    return {"strategy": rec.strategy, "family": rec.request.family.name, "task_type": rec.task or "",
            "pinned": ",".join(sorted(rec.request.pinned)),
            **{f"{VALUE_PREFIX}{k}": v for k, v in rec.config.model_dump().items()}}


@stage_task(STAGE)
def tune_task(ref: RunRef) -> dict[str, object]:
    with run_stage(ref, STAGE) as st:
        cfg = st.config
        history = past_runs(cfg, ref.parent_run_id)
        rec = run_tune(st.read(CURATE_STATS), st.read(LABEL_CAPTION_STATS), cfg, st.out, history)
        st.log.info("tune: %s", headline(rec))
        st.log_params(tracked_params(rec))
        features = {f"{FEATURE_PREFIX}{k}": v for k, v in rec.request.stats.features().items()}
        neighbours = len(rec.shift.evidence) if rec.shift else 0
        st.log_metrics({**features, "memory_estimate_gib": rec.memory.gib(), "history_runs": len(history),
                        "history_neighbours": neighbours})
        st.log_artifact(st.output_path(TUNE_TRAIN_CONFIG))
        st.log_artifact(st.output_path(TUNE_RATIONALE))
    return rec.config.model_dump()
