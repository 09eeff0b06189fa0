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

from deploy.registry import concept_name
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
from training.tuner.suggestion import PastSuggestion, load_suggestion

from ._prefect import stage_task

STAGE = "tune"


def run_tune(curate_stats: CurateStats, caption_stats: CaptionStats, cfg: FactoryConfig, out: Path,
             history: list[PastRun] | None = None, suggestion: PastSuggestion | None = None) -> Recommendation:
    """Recommend and write ``train_config.yaml`` and ``rationale.md`` into ``out``."""
    family = family_for(cfg.models.base_family, cfg.models.base)
    request = request_for(cfg, stats_from(curate_stats, caption_stats), family, history or [], suggestion)
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


def last_suggestion(cfg: FactoryConfig, topics: list[str], exclude_parent: str | None) -> PastSuggestion | None:
    """The concept's last rejection's advice, when the tuner applies it (``tune.apply_suggestion``)."""
    if not cfg.tune.apply_suggestion or cfg.tune.strategy != "auto":
        return None
    if not topics and not cfg.deploy.concept.strip():
        return None  # no concept to look up
    return load_suggestion(cfg.tracking.uri, cfg.tracking.experiment, concept_name(cfg.deploy.concept, topics),
                           exclude_parent)


# The values logged as params (the whole config is the run's train_config.yaml artifact and the
# train stage's params); few, so reading 1,000 past runs back stays fast.
HEADLINE = ("rank", "alpha", "learning_rate", "max_steps", "batch_size", "gradient_accumulation_steps",
            "resolution", "optimizer", "mixed_precision", "gradient_checkpointing")


def tracking_record(rec: Recommendation, history_runs: int = 0) -> tuple[dict[str, Any], dict[str, float]]:
    """(params, metrics) of the tune run: what later runs' history reads back (family, task, the
    headline values, the dataset's features) and the memory estimate."""
    params = {"strategy": rec.strategy, "family": rec.request.family.name, "task_type": rec.task or "",
              "pinned": ",".join(sorted(rec.request.pinned)),
              "suggestion_from": rec.request.suggestion.run_id if rec.request.suggestion else "",
              **{f"{VALUE_PREFIX}{k}": getattr(rec.config, k) for k in HEADLINE}}
    metrics = {**{f"{FEATURE_PREFIX}{k}": v for k, v in rec.request.stats.features().items()},
               "memory_estimate_gib": rec.memory.gib(), "history_runs": float(history_runs),
               "history_neighbours": float(len(rec.shift.evidence) if rec.shift else 0)}
    return params, metrics


@stage_task(STAGE)
def tune_task(ref: RunRef) -> dict[str, object]:
    with run_stage(ref, STAGE) as st:
        cfg = st.config
        history = past_runs(cfg, ref.parent_run_id)
        suggestion = last_suggestion(cfg, ref.topics, ref.parent_run_id)
        if suggestion is not None:
            st.log.info("tune: applying the suggestion of rejected run %s: %s", suggestion.run_id, suggestion.changes)
        rec = run_tune(st.read(CURATE_STATS), st.read(LABEL_CAPTION_STATS), cfg, st.out, history, suggestion)
        st.log.info("tune: %s", headline(rec))
        params, metrics = tracking_record(rec, len(history))
        st.log_params(params)
        st.log_metrics(metrics)
        st.log_artifact(st.output_path(TUNE_TRAIN_CONFIG))
        st.log_artifact(st.output_path(TUNE_RATIONALE))
    return rec.config.model_dump()
