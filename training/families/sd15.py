"""Stable Diffusion 1.x / 2.x: one CLIP text encoder, its last hidden state as the prompt."""

from __future__ import annotations

from typing import Any

import torch

from . import Prompt
from .unet import UNetFamily, token_ids


class SD15(UNetFamily):
    name = "sd15"

    def encode_prompt(self, pipe: Any, captions: list[str], device: torch.device) -> Prompt:
        ids = token_ids(pipe.tokenizer, pipe.text_encoder, captions, device)
        return {"hidden": pipe.text_encoder(ids, return_dict=False)[0]}
