"""FLUX.1: ``FluxTransformer2DModel`` trained with flow matching (``flow.FlowFamily``).

- Prompt: CLIP's pooled output and T5's last hidden state, through the pipeline's own
  ``encode_prompt`` (so training sees what inference sees), T5 at the pipeline's sequence length.
- Latents are packed into 2x2 patches with their image ids (``FluxPipeline._pack_latents`` /
  ``_prepare_latent_image_ids``); the prediction is unpacked back to latent shape.
- The dev model is guidance-distilled: its transformer takes a guidance embedding; LoRAs train
  with guidance 1.0 (kohya sd-scripts' recommended value for FLUX.1-dev LoRAs).
- LoRA targets: diffusers' ``train_dreambooth_lora_flux.py`` set (attention and MLP projections
  of both streams of the double blocks, q/k/v of the single blocks) plus the single blocks' MLP
  input ``proj_mlp``.
- kohya / ComfyUI file: sd-scripts' names, the original (BFL) module names: fused
  ``img_attn_qkv`` / ``txt_attn_qkv`` / single ``linear1`` (q, k, v, mlp) are written as one LoRA
  of the summed rank with a block-diagonal up weight, which diffusers' converter and ComfyUI split
  back exactly.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import torch

from ..dataset import Sample
from ..export_kohya import KohyaNames
from . import HubCard, Noised, Prompt
from .flow import FlowFamily

TRAIN_GUIDANCE = 1.0
MAX_T5_TOKENS = 512

# diffusers module (inside a double block) -> sd-scripts name; fused ones with their member index.
_DOUBLE = {
    "attn.to_out.0": "img_attn_proj", "ff.net.0.proj": "img_mlp_0", "ff.net.2": "img_mlp_2",
    "norm1.linear": "img_mod_lin", "attn.to_add_out": "txt_attn_proj", "ff_context.net.0.proj": "txt_mlp_0",
    "ff_context.net.2": "txt_mlp_2", "norm1_context.linear": "txt_mod_lin",
}
_DOUBLE_FUSED = {"attn.to_q": ("img_attn_qkv", 0), "attn.to_k": ("img_attn_qkv", 1),
                 "attn.to_v": ("img_attn_qkv", 2), "attn.add_q_proj": ("txt_attn_qkv", 0),
                 "attn.add_k_proj": ("txt_attn_qkv", 1), "attn.add_v_proj": ("txt_attn_qkv", 2)}
_SINGLE = {"proj_out": "linear2", "norm.linear": "modulation_lin"}
_SINGLE_FUSED = {"attn.to_q": ("linear1", 0), "attn.to_k": ("linear1", 1), "attn.to_v": ("linear1", 2),
                 "proj_mlp": ("linear1", 3)}
# Output width of each fused member in units of the block's width (Flux's MLP ratio is 4).
_FUSED_OUT = {"img_attn_qkv": (1, 1, 1), "txt_attn_qkv": (1, 1, 1), "linear1": (1, 1, 1, 4)}
_TOP = {"x_embedder": "img_in", "context_embedder": "txt_in",
        "time_text_embed.timestep_embedder.linear_1": "time_in_in_layer",
        "time_text_embed.timestep_embedder.linear_2": "time_in_out_layer",
        "time_text_embed.text_embedder.linear_1": "vector_in_in_layer",
        "time_text_embed.text_embedder.linear_2": "vector_in_out_layer",
        "time_text_embed.guidance_embedder.linear_1": "guidance_in_in_layer",
        "time_text_embed.guidance_embedder.linear_2": "guidance_in_out_layer"}
kohya_module = KohyaNames("Flux", {"transformer_blocks": ("lora_unet_double_blocks_", _DOUBLE, _DOUBLE_FUSED),
                                   "single_transformer_blocks": ("lora_unet_single_blocks_", _SINGLE, _SINGLE_FUSED)},
                          {module: f"lora_unet_{name}" for module, name in _TOP.items()})


def _widths(name: str) -> tuple[int, ...]:
    return _FUSED_OUT[name.rsplit("_blocks_", 1)[-1].split("_", 1)[-1]]


def flux_kohya_state(peft_state: dict[str, torch.Tensor], alpha: float) -> dict[str, torch.Tensor]:
    """``transformer.<module>.lora_A/B.weight`` (and ``text_encoder.…``) → sd-scripts Flux keys."""
    from ..export_kohya import transformer_kohya_state

    return transformer_kohya_state(peft_state, alpha, "flux", kohya_module, _widths)


@lru_cache(maxsize=64)
def _inputs(b: int, h: int, w: int, text_len: int, device: torch.device, dtype: torch.dtype,
            guidance_embeds: bool) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """The transformer's guidance, text ids and image ids for a batch shape: constants of the
    shape (the transformer only reads them), built once per bucket instead of every step."""
    from diffusers import FluxPipeline

    guidance = torch.full((b,), TRAIN_GUIDANCE, device=device, dtype=torch.float32) if guidance_embeds else None
    return (guidance, torch.zeros(text_len, 3, device=device, dtype=dtype),
            FluxPipeline._prepare_latent_image_ids(b, h // 2, w // 2, device, dtype))


class Flux(FlowFamily):
    name = "flux"
    default_targets: tuple[str, ...] = (
        "attn.to_k", "attn.to_q", "attn.to_v", "attn.to_out.0", "attn.add_k_proj", "attn.add_q_proj",
        "attn.add_v_proj", "attn.to_add_out", "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj",
        "ff_context.net.2", "proj_mlp")
    modelspec_architecture = "flux-1-dev/lora"
    modelspec_implementation = "https://github.com/black-forest-labs/flux"
    kohya_base_version = "flux1"
    a1111_sd_version = "Flux"  # Forge's SdVersion.Flux (A1111 itself shows it as unknown)
    hub_card = HubCard(("flux", "flux-diffusers"), "other", "flux-1-dev-non-commercial-license",
                       "https://huggingface.co/black-forest-labs/FLUX.1-dev/blob/main/LICENSE.md")
    unloadable_encoders: tuple[str, ...] = ("text_encoder", "text_encoder_2")  # CLIP-L, T5-XXL

    def max_sequence_length(self, pipe: Any) -> int:
        return min(int(pipe.tokenizer_2.model_max_length), MAX_T5_TOKENS)

    def encode_prompt(self, pipe: Any, captions: list[str], device: torch.device) -> Prompt:
        hidden, pooled, _ = pipe.encode_prompt(prompt=captions, prompt_2=None, device=device,
                                               max_sequence_length=self.max_sequence_length(pipe))
        return {"hidden": hidden, "pooled": pooled}

    def predict(self, pipe: Any, noised: Noised, prompt: Prompt, samples: list[Sample]) -> torch.Tensor:
        from diffusers import FluxPipeline

        x = noised.inputs
        b, c, h, w = x.shape
        transformer, hidden = pipe.transformer, prompt["hidden"]
        guidance, txt_ids, img_ids = _inputs(b, h, w, hidden.shape[1], x.device, x.dtype,
                                             bool(transformer.config.guidance_embeds))
        out = transformer(
            hidden_states=FluxPipeline._pack_latents(x, b, c, h, w), timestep=noised.timesteps.to(x.dtype),
            guidance=guidance, pooled_projections=prompt["pooled"], encoder_hidden_states=hidden,
            txt_ids=txt_ids, img_ids=img_ids, return_dict=False)[0]
        scale = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
        return FluxPipeline._unpack_latents(out, h * scale, w * scale, scale)

    def kohya_state(self, peft_state: dict[str, torch.Tensor], alpha: float) -> dict[str, torch.Tensor]:
        return flux_kohya_state(peft_state, alpha)

    def kohya_name(self, module: str) -> tuple[str, int | None]:
        return kohya_module(module)

    def inference_kwargs(self, pipe: Any) -> dict[str, Any]:
        return {"max_sequence_length": self.max_sequence_length(pipe)}
