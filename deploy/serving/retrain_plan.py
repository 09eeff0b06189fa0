"""What a retrain run takes from the users' feedback:

- the prompts users rated low (``retrain.low_rating``) become evaluation prompts, so the next
  candidate is judged on what failed;
- a served image rated well (``retrain.sample_min_rating``) whose user corrected its caption
  becomes a training sample: the image (kept by ``serve.keep_images``) with the user's caption,
  written as a feedback-samples folder that the label stage adds with caption source ``feedback``.
  A corrected caption on a low-rated image is not trained on (it would teach the bad image).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lora_factory.config import FactoryConfig
from lora_factory.feedback_samples import FeedbackSample, sample_file_name, write_samples

from .champion import resolve_champion
from .feedback_store import FeedbackStore


@dataclass
class RetrainPlan:
    concept: str
    reason: str
    ratings: int = 0
    mean_rating: float | None = None
    low_prompts: list[str] = field(default_factory=list)
    corrected_captions: int = 0
    samples: int = 0  # corrected captions that became training samples
    samples_dir: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)


def _template(prompt: str) -> str:
    """A user's prompt as an evaluation template: braces are literal, not {topic} fields."""
    return prompt.replace("{", "{{").replace("}", "}}")


def low_prompts(rows: list[dict[str, Any]], low: int, limit: int) -> list[str]:
    """The distinct prompts rated ``low`` or below, newest first."""
    seen: list[str] = []
    for row in reversed(rows):
        prompt = (row["prompt"] or "").strip()
        if row["rating"] <= low and prompt and prompt not in seen and len(seen) < limit:
            seen.append(prompt)
    return seen


def sample_rows(rows: list[dict[str, Any]], min_rating: int, limit: int) -> list[dict[str, Any]]:
    """The newest well-rated feedback with a corrected caption, one per generation."""
    picked: dict[str, dict[str, Any]] = {}
    for row in reversed(rows):
        gid = row["generation_id"]
        if gid and row["corrected_caption"] and row["rating"] >= min_rating and gid not in picked:
            picked[gid] = row
    return list(picked.values())[:limit]


def write_feedback_samples(store: FeedbackStore, rows: list[dict[str, Any]],
                           root: Path) -> tuple[Path | None, int]:
    """(the samples' folder under ``root``, how many); None when no row has its image kept."""
    images = []
    for row in rows:
        png = store.generation_png(row["generation_id"])
        if png is None:
            continue
        images.append((FeedbackSample(sample_file_name(png), " ".join(row["corrected_caption"].split()),
                                      row["generation_id"], int(row["id"]), int(row["rating"]),
                                      row["prompt"] or "", str(row["model_version"] or "")), png))
    return (write_samples(root, images) if images else None), len(images)


def retrain_plan(store: FeedbackStore, concept: str, reason: str, cfg: FactoryConfig,
                 samples_root: Path | None = None) -> RetrainPlan:
    """The run's overrides from ``concept``'s feedback; samples are written under ``samples_root``
    (None: not written)."""
    rc = cfg.retrain
    rows = store.feedback_rows(concept)
    plan = RetrainPlan(concept, reason, ratings=len(rows))
    if rows:
        plan.mean_rating = round(sum(r["rating"] for r in rows) / len(rows), 4)
    plan.corrected_captions = sum(1 for r in rows if r["corrected_caption"])
    plan.low_prompts = low_prompts(rows, rc.low_rating, rc.max_eval_prompts)
    if plan.low_prompts:
        existing = list(cfg.evaluate.prompts)
        plan.overrides["evaluate.prompts"] = existing + [
            t for t in map(_template, plan.low_prompts) if t not in existing]
    wanted = sample_rows(rows, rc.sample_min_rating, rc.max_samples)
    folder, plan.samples = write_feedback_samples(store, wanted, samples_root) if samples_root else (None, 0)
    if folder is not None:
        plan.samples_dir = str(folder)
        plan.overrides["label.feedback_dir"] = str(folder)
    return plan


def champion_overrides(cfg: FactoryConfig, concept: str, cache_dir: Path) -> dict[str, Any]:
    """``retrain.from_champion``: train from the champion's LoRA file, with the rank, alpha and
    targets it was trained with (pinned, so the tuner keeps them). ``NoChampionError`` when the
    concept has none."""
    from training.lora import adapter_settings

    champ = resolve_champion(cfg.tracking.uri, concept, cache_dir)
    settings = adapter_settings(champ.lora_file)
    return {"train.init_lora": str(champ.lora_file), **{f"train.{k}": v for k, v in settings.items()}}
