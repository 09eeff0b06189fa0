"""LoRATuner: the training config for a dataset, with the reason for every value.

Strategy ``profile`` (the skeleton) takes the profile's settings and only corrects what cannot
work for this dataset (a batch larger than the dataset). Statistics-driven strategies plug in
as further ``recommend_*`` functions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lora_factory.config import TrainConfig


@dataclass
class DatasetStats:
    num_images: int
    mean_caption_words: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Recommendation:
    config: TrainConfig
    rationale: list[str]

    def markdown(self, stats: DatasetStats, strategy: str) -> str:
        lines = [
            "# Training config rationale",
            "",
            f"Strategy: `{strategy}`. Dataset: {stats.num_images} images, "
            f"{stats.mean_caption_words:.1f} words per caption on average.",
            "",
            "| setting | value | why |",
            "|---|---|---|",
        ]
        reasons = dict(r.split(": ", 1) for r in self.rationale)
        for key, value in self.config.model_dump().items():
            lines.append(f"| `{key}` | `{value}` | {reasons.get(key, 'from the profile')} |")
        return "\n".join(lines) + "\n"


def recommend_from_profile(profile_cfg: TrainConfig, stats: DatasetStats) -> Recommendation:
    """The profile's config, made feasible for ``stats``."""
    cfg = profile_cfg.model_copy(deep=True)
    rationale: list[str] = []
    if stats.num_images < cfg.batch_size:
        rationale.append(
            f"batch_size: lowered from {cfg.batch_size} to {stats.num_images}, "
            "the number of training images"
        )
        cfg.batch_size = max(1, stats.num_images)
    return Recommendation(cfg, rationale)


STRATEGIES = {"profile": recommend_from_profile}


def recommend(strategy: str, profile_cfg: TrainConfig, stats: DatasetStats) -> Recommendation:
    return STRATEGIES[strategy](profile_cfg, stats)
