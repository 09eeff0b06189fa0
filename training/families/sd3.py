"""Stable Diffusion 3 / 3.5: ``SD3Transformer2DModel`` trained with flow matching
(``flow.FlowFamily``, SD3's fixed scheduler shift of 3.0), prompts from the pipeline's own
``encode_prompt`` (two CLIP encoders' penultimate states and pooled outputs, and T5), latents
unpacked (the transformer patches them itself). Targets: diffusers'
``train_dreambooth_lora_sd3.py`` defaults (attention projections of both streams).

Not done yet: a kohya / ComfyUI file (profiles set ``train.export_kohya: false``): diffusers
0.42 has no converter from sd-scripts' SD3 names, so such a file could not be checked through
``load_lora_weights``; the diffusers file loads in diffusers and ComfyUI alike.
"""

from __future__ import annotations

from typing import Any

import torch

from lora_factory.errors import StageError

from ..dataset import Sample
from . import Noised, Prompt
from .flow import FlowFamily


class SD3(FlowFamily):
    name = "sd3"
    default_targets: tuple[str, ...] = (
        "attn.to_k", "attn.to_q", "attn.to_v", "attn.to_out.0", "attn.add_k_proj", "attn.add_q_proj",
        "attn.add_v_proj", "attn.to_add_out")
    modelspec_architecture = "stable-diffusion-v3-medium/lora"
    modelspec_implementation = "https://github.com/Stability-AI/sd3.5"
    kohya_base_version = "sd3"
    unloadable_encoders: tuple[str, ...] = ("text_encoder_3",)  # T5-XXL
    max_t5_tokens = 256  # diffusers' SD3 pipeline and trainers default

    def max_sequence_length(self, pipe: Any) -> int:
        return min(int(pipe.tokenizer_3.model_max_length), self.max_t5_tokens)

    def encode_prompt(self, pipe: Any, captions: list[str], device: torch.device) -> Prompt:
        hidden, _, pooled, _ = pipe.encode_prompt(prompt=captions, prompt_2=None, prompt_3=None, device=device,
                                                  do_classifier_free_guidance=False,
                                                  max_sequence_length=self.max_sequence_length(pipe))
        return {"hidden": hidden, "pooled": pooled}

    def predict(self, pipe: Any, noised: Noised, prompt: Prompt, samples: list[Sample]) -> torch.Tensor:
        # SD3's transformer takes the timestep on the scheduler's 0..1000 scale.
        return pipe.transformer(hidden_states=noised.inputs, timestep=noised.timesteps * 1000,
                                encoder_hidden_states=prompt["hidden"], pooled_projections=prompt["pooled"],
                                return_dict=False)[0]

    def kohya_state(self, peft_state: dict[str, torch.Tensor], alpha: float) -> dict[str, torch.Tensor]:
        raise StageError("the sd3 family has no kohya file yet: set train.export_kohya false "
                         "(the diffusers file loads in diffusers and ComfyUI)")

    def inference_kwargs(self, pipe: Any) -> dict[str, Any]:
        return {"max_sequence_length": self.max_sequence_length(pipe)}
