"""Evaluate: does the LoRA work, and is it safe to ship? Base vs LoRA on the same prompts, seeds
and scheduler.

One module per job: ``prompts`` (the run's prompt set), ``generate`` (batched rendering),
``embedders`` (registered image embeddings: clip, pixels), ``metrics`` (pure functions of
embeddings), ``score`` (metrics -> EvalResult numbers), ``findings`` (silent failures),
``verdict`` (thresholds), ``grid`` and ``report`` (the pictures), ``stage`` (runs them in order)
and ``task`` (the Prefect wrapper).
"""

from .stage import STAGE, EvalSetup, evaluate_lora
from .task import evaluate_task
from .verdict import check_thresholds, judge

__all__ = ["STAGE", "EvalSetup", "check_thresholds", "evaluate_lora", "evaluate_task", "judge"]
