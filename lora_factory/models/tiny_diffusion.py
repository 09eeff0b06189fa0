"""Tiny Stable Diffusion 1.5 and SDXL pipelines: the real diffusers classes at toy widths.

Why: training, LoRA export and evaluation code must run the exact code paths of the real
pipelines (``from_pretrained``, ``load_lora_weights``, schedulers, VAE scaling) on a CPU in
seconds. Layouts follow the real repositories: same block types and order, same scheduler
settings, a VAE with SD's 8x downsampling (so 64 px images have 8x8 latents), CLIP's real
tokenizer, no safety checker.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lora_factory.models.clip_tokenizer import (
    MAX_LENGTH,
    VOCAB_SIZE,
    build_clip_tokenizer,
    write_vocab_files,
)
from lora_factory.models.seeding import seeded
from lora_factory.models.tiny_vae import make_colour_preserving

# SD1.5's noise schedule; every SD1.x/SDXL checkpoint was trained with it.
_BETAS: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
    "steps_offset": 1,
}

_VAE: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [8, 16, 32, 32],  # 4 blocks: 8x downsampling, like SD
    "layers_per_block": 1,
    "latent_channels": 4,
    "norm_num_groups": 8,
    "sample_size": 64,
}

_TEXT: dict[str, Any] = {
    "vocab_size": VOCAB_SIZE,
    "max_position_embeddings": MAX_LENGTH,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "projection_dim": 32,
    "bos_token_id": 49406,
    "eos_token_id": 49407,
    "pad_token_id": 49407,
}

SD15_CONFIG: dict[str, Any] = {
    "unet": {
        "sample_size": 8,  # latents; x8 VAE -> 64 px default resolution
        "in_channels": 4,
        "out_channels": 4,
        "block_out_channels": [32, 64],
        "layers_per_block": 1,
        "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
        "cross_attention_dim": 32,
        "attention_head_dim": 4,  # diffusers' SD1.x naming: this is the number of heads
        "norm_num_groups": 32,
    },
    "vae": {**_VAE, "norm_num_groups": 1, "scaling_factor": 0.18215},
    "text_encoder": {**_TEXT, "hidden_act": "quick_gelu"},
    "scheduler": {**_BETAS, "skip_prk_steps": True, "set_alpha_to_one": False},
}

SDXL_CONFIG: dict[str, Any] = {
    "unet": {
        "sample_size": 8,
        "in_channels": 4,
        "out_channels": 4,
        "block_out_channels": [32, 64],
        "layers_per_block": 1,
        "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
        "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"],
        "transformer_layers_per_block": [1, 2],
        "attention_head_dim": [2, 4],
        "use_linear_projection": True,
        "cross_attention_dim": 64,  # text_encoder (32) + text_encoder_2 (32) hidden states
        "addition_embed_type": "text_time",
        "addition_time_embed_dim": 8,
        # 6 size/crop ids x addition_time_embed_dim + text_encoder_2's pooled projection.
        "projection_class_embeddings_input_dim": 6 * 8 + 32,
        "norm_num_groups": 32,
    },
    "vae": {**_VAE, "norm_num_groups": 1, "scaling_factor": 0.13025},
    "text_encoder": {**_TEXT, "hidden_act": "quick_gelu"},
    "text_encoder_2": {**_TEXT, "hidden_act": "gelu"},
    "scheduler": {
        **_BETAS,
        "timestep_spacing": "leading",
        "interpolation_type": "linear",
        "use_karras_sigmas": False,
    },
}


def _shared_parts(cfg: dict[str, Any], seed: int) -> dict[str, Any]:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    with seeded(seed):
        unet = UNet2DConditionModel(**cfg["unet"])
    with seeded(seed + 1):
        vae = make_colour_preserving(AutoencoderKL(**cfg["vae"]))
    with seeded(seed + 2):
        text_encoder = CLIPTextModel(CLIPTextConfig(**cfg["text_encoder"]))
    return {
        "unet": unet,
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": build_clip_tokenizer(),
    }


def build_sd15(out_dir: Path, seed: int) -> None:
    """An SD1.5-layout pipeline directory (PNDM scheduler, no safety checker)."""
    from diffusers import PNDMScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline(
        **_shared_parts(SD15_CONFIG, seed),
        scheduler=PNDMScheduler(**SD15_CONFIG["scheduler"]),
        safety_checker=None,
        feature_extractor=None,
        image_encoder=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(out_dir, safe_serialization=True)
    write_vocab_files(out_dir / "tokenizer")


def build_sdxl(out_dir: Path, seed: int) -> None:
    """An SDXL-layout pipeline directory: two text encoders, text_time conditioning, Euler."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    parts = _shared_parts(SDXL_CONFIG, seed)
    with seeded(seed + 3):
        text_encoder_2 = CLIPTextModelWithProjection(
            CLIPTextConfig(**SDXL_CONFIG["text_encoder_2"])
        )
    pipe = StableDiffusionXLPipeline(
        **parts,
        text_encoder_2=text_encoder_2,
        # SDXL's second tokenizer (from OpenCLIP bigG) pads with "!" rather than <|endoftext|>.
        tokenizer_2=build_clip_tokenizer(pad_token="!"),
        scheduler=EulerDiscreteScheduler(**SDXL_CONFIG["scheduler"]),
        image_encoder=None,
        feature_extractor=None,
        force_zeros_for_empty_prompt=True,
        add_watermarker=False,
    )
    pipe.save_pretrained(out_dir, safe_serialization=True)
    for folder in ("tokenizer", "tokenizer_2"):
        write_vocab_files(out_dir / folder)
