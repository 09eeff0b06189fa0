"""The optional output safety filter (``serve.safety_filter``): every generated image goes through
diffusers' ``StableDiffusionSafetyChecker`` (``models.safety_checker``: CompVis's checker, or
``tiny:safety`` offline) before it is answered. A blocked image is never sent nor stored; the
block is recorded (store row and metric) with its score.

The score is the checker's own rule: the image's CLIP embedding against each concept embedding,
cosine minus that concept's threshold, plus ``serve.safety_adjustment``; a special-care concept
over its threshold adds 0.01 to every concept score. The image is blocked when the highest
score is above 0, so a higher adjustment makes the filter stricter.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

SPECIAL_CARE_BUMP = 0.01


@dataclass(frozen=True)
class SafetyVerdict:
    blocked: bool
    score: float  # the highest concept score after the adjustment; above 0 blocks


def verdict(concept_max: float, special_max: float, adjustment: float) -> SafetyVerdict:
    """The decision from the raw highest (cosine - threshold) of the concepts and special-care
    concepts."""
    bump = SPECIAL_CARE_BUMP if special_max + adjustment > 0 else 0.0
    score = concept_max + adjustment + bump
    return SafetyVerdict(score > 0, round(score, 6))


class SafetyFilter:
    """The loaded checker and its image processor (CPU; a CLIP vision tower per image)."""

    def __init__(self, ref: str, model_cache: Path, adjustment: float) -> None:
        from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
        from transformers import CLIPImageProcessor

        from lora_factory.models import resolve_ref

        folder = resolve_ref(ref, "safety_checker", model_cache)
        self.checker = StableDiffusionSafetyChecker.from_pretrained(folder).eval()
        self.processor = CLIPImageProcessor.from_pretrained(folder)
        self.adjustment = adjustment

    def raw_scores(self, image: Any) -> tuple[float, float]:
        """(highest concept score, highest special-care score) of a PIL image, unadjusted."""
        import torch
        from torch.nn.functional import normalize

        pixels = self.processor(images=[image.convert("RGB")], return_tensors="pt").pixel_values
        with torch.no_grad():
            pooled = self.checker.vision_model(pixels.to(self.checker.dtype))[1]
            embed = normalize(self.checker.visual_projection(pooled))
            c = self.checker
            concept = embed @ normalize(c.concept_embeds).T - c.concept_embeds_weights
            special = embed @ normalize(c.special_care_embeds).T - c.special_care_embeds_weights
        return float(concept.max()), float(special.max())

    def check(self, image: Any) -> SafetyVerdict:
        return verdict(*self.raw_scores(image), self.adjustment)
