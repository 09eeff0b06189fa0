"""What a retrain run takes from the users' feedback: the prompts users rated low become
evaluation prompts (so the next candidate is judged on what failed), and the corrected captions
are counted for the run's record."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lora_factory.config import FactoryConfig

from .feedback_store import FeedbackStore

LOW = 2  # ratings at or below this mark a prompt as failed


@dataclass
class RetrainPlan:
    concept: str
    reason: str
    ratings: int = 0
    mean_rating: float | None = None
    low_prompts: list[str] = field(default_factory=list)
    corrected_captions: int = 0
    overrides: dict[str, Any] = field(default_factory=dict)


def _template(prompt: str) -> str:
    """A user's prompt as an evaluation template: braces are literal, not {topic} fields."""
    return prompt.replace("{", "{{").replace("}", "}}")


def retrain_plan(store: FeedbackStore, concept: str, reason: str, cfg: FactoryConfig,
                 max_prompts: int = 8) -> RetrainPlan:
    rows = store.feedback_rows(concept)
    plan = RetrainPlan(concept, reason, ratings=len(rows))
    if rows:
        plan.mean_rating = round(sum(r["rating"] for r in rows) / len(rows), 4)
    plan.corrected_captions = sum(1 for r in rows if r["corrected_caption"])
    seen: set[str] = set()
    for row in reversed(rows):  # newest first
        prompt = (row["prompt"] or "").strip()
        if row["rating"] <= LOW and prompt and prompt not in seen and len(seen) < max_prompts:
            seen.add(prompt)
            plan.low_prompts.append(prompt)
    if plan.low_prompts:
        existing = list(cfg.evaluate.prompts)
        plan.overrides["evaluate.prompts"] = existing + [
            t for t in map(_template, plan.low_prompts) if t not in existing]
    return plan
