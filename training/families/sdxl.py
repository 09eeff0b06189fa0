"""SDXL: both text encoders' penultimate hidden states concatenated, the second's pooled
projection, and the size/crop ``time_ids`` (original size, crop corner, target size = the
sample's bucket) as the UNet's added conditioning."""

from __future__ import annotations

from typing import Any

import torch

from ..dataset import Sample
from . import HubCard, Prompt
from .unet import UNetFamily, token_ids


def time_ids(samples: list[Sample]) -> torch.Tensor:
    """(B, 6): original (h, w), crop (top, left), target (h, w) — SDXL's micro-conditioning."""
    return torch.tensor([[*s.original_size, *s.crop_top_left, s.bucket.height, s.bucket.width]
                         for s in samples], dtype=torch.long)


class SDXL(UNetFamily):
    name = "sdxl"
    modelspec_architecture = "stable-diffusion-xl-v1-base/lora"
    modelspec_implementation = "https://github.com/Stability-AI/generative-models"
    kohya_base_version = "sdxl_base_v1-0"
    a1111_sd_version = "SDXL"
    hub_card = HubCard(("stable-diffusion-xl", "stable-diffusion-xl-diffusers"), "openrail++")

    def encode_prompt(self, pipe: Any, captions: list[str], device: torch.device) -> Prompt:
        hidden, pooled = [], None
        for tokenizer, encoder in ((pipe.tokenizer, pipe.text_encoder), (pipe.tokenizer_2, pipe.text_encoder_2)):
            out = encoder(token_ids(tokenizer, encoder, captions, device), output_hidden_states=True)
            pooled = out[0]  # the last encoder's (CLIPTextModelWithProjection) text_embeds
            hidden.append(out.hidden_states[-2])
        return {"hidden": torch.cat(hidden, dim=-1), "pooled": pooled}

    def added_conditioning(self, prompt: Prompt, samples: list[Sample]) -> dict[str, torch.Tensor]:
        hidden = prompt["hidden"]
        return {"text_embeds": prompt["pooled"],
                "time_ids": time_ids(samples).to(hidden.device, dtype=hidden.dtype)}

    def embeds_kwargs(self, prompt: Prompt, negative: Prompt) -> dict[str, Any]:
        return {**super().embeds_kwargs(prompt, negative), "pooled_prompt_embeds": prompt["pooled"],
                "negative_pooled_prompt_embeds": negative["pooled"]}
