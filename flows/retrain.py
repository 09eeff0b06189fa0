"""The ``retrain`` flow: a factory run for one concept, started by a feedback event
(``lora.feedback.low-rating`` / ``lora.feedback.new-data``, see prefect.yaml's trigger) or by hand."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from prefect import flow, get_run_logger

from deploy.serving.feedback_store import FeedbackStore
from deploy.serving.retrain_plan import retrain_plan
from deploy.serving.service import feedback_url
from lora_factory.profiles import load_config

from .factory import lora_factory


@flow(name="lora-factory-retrain")
def retrain(concept: str, reason: str = "manual", profile: str = "tiny",
            overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Retrain ``concept`` with what its users said: low-rated prompts join the evaluation."""
    cfg = load_config(profile, overrides)
    store = FeedbackStore(feedback_url(cfg))
    try:
        plan = retrain_plan(store, concept, reason, cfg)
    finally:
        store.close()
    get_run_logger().info(
        "retrain %s (%s): %d ratings, mean %s, %d low-rated prompts added to the evaluation, "
        "%d corrected captions", concept, reason, plan.ratings, plan.mean_rating,
        len(plan.low_prompts), plan.corrected_captions)
    result = lora_factory(topics=[concept], profile=profile,
                          overrides={**(overrides or {}), **plan.overrides})
    return {"plan": asdict(plan), "run": result}
