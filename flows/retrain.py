"""The ``retrain`` flow: a factory run for one concept, started by a feedback event
(``lora.feedback.low-rating`` / ``lora.feedback.new-data``, see prefect.yaml's trigger) or by hand.

What it takes from the feedback (``deploy.serving.retrain_plan``): low-rated prompts join the
evaluation prompts, well-rated images with a corrected caption join the training set (label's
``feedback_dir``), and with ``retrain.from_champion`` training starts from the champion's LoRA.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from prefect import flow, get_run_logger

from deploy.serving.champion import NoChampionError
from deploy.serving.feedback_store import FeedbackStore
from deploy.serving.retrain_plan import champion_overrides, retrain_plan
from deploy.serving.service import feedback_url
from lora_factory.home import home_of
from lora_factory.names import topic_key
from lora_factory.profiles import load_config

from .factory import lora_factory


@flow(name="lora-factory-retrain")
def retrain(concept: str, reason: str = "manual", profile: str = "tiny",
            overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Retrain ``concept`` with what its users said."""
    log = get_run_logger()
    cfg = load_config(profile, overrides)
    work = home_of(cfg).work / "retrain" / topic_key(concept)
    store = FeedbackStore(feedback_url(cfg))
    try:
        plan = retrain_plan(store, concept, reason, cfg, work / "feedback-samples")
    finally:
        store.close()
    log.info("retrain %s (%s): %d ratings, mean %s, %d low-rated prompts added to the evaluation, "
             "%d corrected captions, %d of them training samples", concept, reason, plan.ratings,
             plan.mean_rating, len(plan.low_prompts), plan.corrected_captions, plan.samples)
    extra = dict(plan.overrides)
    if cfg.retrain.from_champion:
        try:
            extra.update(champion_overrides(cfg, concept, work / "champion"))
            log.info("retrain %s: training starts from the champion's LoRA %s", concept, extra["train.init_lora"])
        except NoChampionError as e:
            log.warning("retrain %s: %s; training starts from a fresh LoRA", concept, e)
    result = lora_factory(topics=[concept], profile=profile, overrides={**(overrides or {}), **extra})
    return {"plan": asdict(plan), "run": result}
