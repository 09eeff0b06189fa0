"""Stable Diffusion 3 / 3.5: ``SD3Transformer2DModel`` trained with flow matching
(``flow.FlowFamily``, SD3's fixed scheduler shift of 3.0), prompts from the pipeline's own
``encode_prompt`` (two CLIP encoders' penultimate states and pooled outputs, and T5), latents
unpacked (the transformer patches them itself). Targets: diffusers'
``train_dreambooth_lora_sd3.py`` defaults (attention projections of both streams).

kohya / ComfyUI file: sd-scripts' names (``networks/lora_sd3.py``), ``lora_unet_`` + the
original MMDiT module path with underscores (``joint_blocks_0_x_block_attn_qkv``), which is
also how ComfyUI and Forge map an SD3 LoRA onto the model's own weights. diffusers' separate
q / k / v (``to_q``, ``add_q_proj``, ``attn2.to_q``) are one fused ``qkv`` there: written as one
LoRA of the summed rank with a block-diagonal up weight. The modulation layers whose halves
diffusers stores swapped (``norm_out``, the last block's ``norm1_context``:
``AdaLayerNormContinuous``, scale first) get their up rows swapped back.

diffusers 0.42 has no converter from those names, so ``load_kohya`` reads the file through a
map derived from diffusers' own single-file SD3 converter (``sd3_keys``), not from the table here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..dataset import Sample
from ..export_kohya import KohyaNames
from . import HubCard, Noised, Prompt
from .flow import FlowFamily

# diffusers module inside transformer_blocks.N -> MMDiT module inside joint_blocks.N.
_BLOCK = {"attn.to_out.0": "x_block.attn.proj", "attn.to_add_out": "context_block.attn.proj",
          "attn2.to_out.0": "x_block.attn2.proj", "ff.net.0.proj": "x_block.mlp.fc1", "ff.net.2": "x_block.mlp.fc2",
          "ff_context.net.0.proj": "context_block.mlp.fc1", "ff_context.net.2": "context_block.mlp.fc2",
          "norm1.linear": "x_block.adaLN_modulation.1", "norm1_context.linear": "context_block.adaLN_modulation.1"}
_FUSED = {f"{attn}.to_{m}": ("x_block." + attn + ".qkv", i) for attn in ("attn", "attn2") for i, m in enumerate("qkv")}
_FUSED |= {f"attn.add_{m}_proj": ("context_block.attn.qkv", i) for i, m in enumerate("qkv")}
_TOP = {"context_embedder": "context_embedder", "proj_out": "final_layer.linear",
        "norm_out.linear": "final_layer.adaLN_modulation.1",
        "time_text_embed.timestep_embedder.linear_1": "t_embedder.mlp.0",
        "time_text_embed.timestep_embedder.linear_2": "t_embedder.mlp.2",
        "time_text_embed.text_embedder.linear_1": "y_embedder.mlp.0",
        "time_text_embed.text_embedder.linear_2": "y_embedder.mlp.2"}


def _u(path: str) -> str:
    return path.replace(".", "_")


kohya_module = KohyaNames("SD3", {"transformer_blocks": ("lora_unet_joint_blocks_", {k: _u(v) for k, v in _BLOCK.items()},
                                                        {k: (_u(n), i) for k, (n, i) in _FUSED.items()})},
                          {module: "lora_unet_" + _u(name) for module, name in _TOP.items()})


def _scale_first(module: str, down: torch.Tensor, up: torch.Tensor) -> bool:
    """diffusers' ``AdaLayerNormContinuous`` (2 x width out: ``norm_out``, the last block's
    ``norm1_context``) puts scale before shift; MMDiT's adaLN_modulation puts shift first."""
    return module == "norm_out.linear" or (module.endswith("norm1_context.linear") and up.shape[0] == 2 * down.shape[1])


def _swap_halves(up: torch.Tensor) -> torch.Tensor:
    first, second = up.chunk(2, dim=0)
    return torch.cat([second, first])


def sd3_kohya_state(peft_state: dict[str, torch.Tensor], alpha: float) -> dict[str, torch.Tensor]:
    """``transformer.<module>.lora_A/B.weight`` (and CLIP encoders') → sd-scripts SD3 keys."""
    from ..export_kohya import transformer_kohya_state

    state = dict(peft_state)
    for key, up in peft_state.items():
        module = key.removeprefix("transformer.").removesuffix(".lora_B.weight")
        if key.startswith("transformer.") and key.endswith(".lora_B.weight"):
            down = peft_state[f"transformer.{module}.lora_A.weight"]
            state[key] = _swap_halves(up) if _scale_first(module, down, up) else up
    return transformer_kohya_state(state, alpha, "sd3", kohya_module, lambda name: (1, 1, 1))


class SD3(FlowFamily):
    name = "sd3"
    default_targets: tuple[str, ...] = (
        "attn.to_k", "attn.to_q", "attn.to_v", "attn.to_out.0", "attn.add_k_proj", "attn.add_q_proj",
        "attn.add_v_proj", "attn.to_add_out")
    modelspec_architecture = "stable-diffusion-v3-medium/lora"
    modelspec_implementation = "https://github.com/Stability-AI/sd3.5"
    kohya_base_version = "sd3"
    # "sd version" stays "Unknown" (FlowFamily's): A1111's SdVersion has no SD3 and Forge's has its
    # SD3 member commented out, so both would ignore "SD3"; "Unknown" is what they can read.
    hub_card = HubCard(("sd3", "sd3-diffusers"), "other", "stabilityai-ai-community",
                       "https://huggingface.co/stabilityai/stable-diffusion-3.5-medium/blob/main/LICENSE.md")
    unloadable_encoders: tuple[str, ...] = ("text_encoder", "text_encoder_2", "text_encoder_3")  # CLIP-L, -G, T5
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
        return sd3_kohya_state(peft_state, alpha)

    def kohya_name(self, module: str) -> tuple[str, int | None]:
        return kohya_module(module)

    def load_kohya(self, pipe: Any, path: Path) -> None:
        from .sd3_keys import diffusers_lora_from_kohya

        pipe.load_lora_weights(diffusers_lora_from_kohya(path, pipe))

    def inference_kwargs(self, pipe: Any) -> dict[str, Any]:
        return {"max_sequence_length": self.max_sequence_length(pipe)}
