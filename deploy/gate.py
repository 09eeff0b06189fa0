"""The promotion gate: a pure decision from evaluation scores.

Like a model-promotion pipeline, every trained adapter becomes a ``candidate``; it becomes the
``champion`` only when its CLIP-T beats the base model's by the configured margin and is not
below the current champion's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lora_factory.config import DeployConfig


@dataclass
class GateDecision:
    promote: bool
    reason: str
    clip_t_delta: float
    clip_t_lora: float
    champion_clip_t: float | None


def gate(eval_result: dict[str, Any], cfg: DeployConfig, champion_clip_t: float | None) -> GateDecision:
    """Promote if LoRA CLIP-T − base CLIP-T ≥ margin and the LoRA is not below the champion."""
    delta = float(eval_result["clip_t_delta"])
    lora = float(eval_result["lora"]["clip_t_mean"])

    def decide(promote: bool, reason: str) -> GateDecision:
        return GateDecision(promote, reason, delta, lora, champion_clip_t)

    if delta < cfg.min_clip_t_delta:
        return decide(False, f"CLIP-T delta {delta:+.4f} < required {cfg.min_clip_t_delta:+.4f}")
    if champion_clip_t is not None and lora < champion_clip_t:
        return decide(False, f"CLIP-T {lora:.4f} below the champion's {champion_clip_t:.4f}")
    return decide(True, f"CLIP-T delta {delta:+.4f} >= {cfg.min_clip_t_delta:+.4f}")
