"""A tiny diffusers ``StableDiffusionSafetyChecker`` (CLIP vision tower, projection, concept
embeddings and their thresholds) with its CLIP image processor, in the hub repo's layout.

Why: serving's output safety filter loads ``CompVis/stable-diffusion-safety-checker`` with
``from_pretrained``; the same files from a seeded random build let the filter run offline. Its
verdicts mean nothing (random concepts); tests steer them with ``serve.safety_adjustment``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lora_factory.models.seeding import seeded

_MEAN = [0.48145466, 0.4578275, 0.40821073]
_STD = [0.26862954, 0.26130258, 0.27577711]

SAFETY_CONFIG: dict[str, Any] = {
    "projection_dim": 16,
    "vision_config": {"image_size": 32, "patch_size": 8, "hidden_size": 32, "intermediate_size": 64,
                      "num_hidden_layers": 2, "num_attention_heads": 2},
    "text_config": {"vocab_size": 1000, "hidden_size": 16, "intermediate_size": 32,
                    "num_hidden_layers": 1, "num_attention_heads": 2,
                    "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1},
    "concept_threshold": 0.4,  # the real checker's thresholds are ~0.2 on 768-d embeddings
}


def build_safety(out_dir: Path, seed: int) -> None:
    """Write ``config.json``, ``model.safetensors`` and ``preprocessor_config.json``."""
    import torch
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig, CLIPImageProcessor

    cfg = SAFETY_CONFIG
    config = CLIPConfig(projection_dim=cfg["projection_dim"], vision_config=cfg["vision_config"],
                        text_config=cfg["text_config"])
    with seeded(seed):
        checker = StableDiffusionSafetyChecker(config)
        with torch.no_grad():
            checker.concept_embeds.copy_(torch.randn(checker.concept_embeds.shape))
            checker.special_care_embeds.copy_(torch.randn(checker.special_care_embeds.shape))
            checker.concept_embeds_weights.fill_(cfg["concept_threshold"])
            checker.special_care_embeds_weights.fill_(cfg["concept_threshold"])
    checker.save_pretrained(out_dir, safe_serialization=True)
    size = cfg["vision_config"]["image_size"]
    CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size},
                       image_mean=_MEAN, image_std=_STD).save_pretrained(out_dir)
