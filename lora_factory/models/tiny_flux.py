"""A tiny FLUX.1-dev pipeline: the real diffusers and transformers classes at toy widths.

Layout as the hub repository: ``FluxTransformer2DModel`` (double- and single-stream blocks,
the guidance embedding of the dev model, rotary axes summing to the head width), a Flux-style
``AutoencoderKL`` (16 latent channels, no quant convs, a shift and a scale factor, 8x
downsampling), CLIP-L's text encoder and tokenizer (as ``tiny:sd``), a T5 v1.1 encoder (gated
GELU) with a tokenizer trained offline (``t5_tokenizer``), and FLUX.1-dev's scheduler config
(resolution-dependent shift). Differences from the real model: the widths, one block of each
kind, and T5's 64-token budget (512 on FLUX.1-dev).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lora_factory.models.clip_tokenizer import build_clip_tokenizer, write_vocab_files
from lora_factory.models.seeding import seeded
from lora_factory.models.t5_tokenizer import T5_VOCAB_SIZE
from lora_factory.models.tiny_diffusion import _TEXT, _VAE

FLUX_CONFIG: dict[str, Any] = {
    "transformer": {
        "patch_size": 1,
        "in_channels": 64,  # 16 latent channels x a 2x2 patch
        "num_layers": 1,
        "num_single_layers": 1,
        "attention_head_dim": 16,
        "num_attention_heads": 2,
        "joint_attention_dim": 32,  # T5's d_model
        "pooled_projection_dim": 32,  # CLIP's pooled output
        "guidance_embeds": True,
        "axes_dims_rope": [4, 6, 6],
    },
    "vae": {**_VAE, "latent_channels": 16, "use_quant_conv": False, "use_post_quant_conv": False,
            "scaling_factor": 0.3611, "shift_factor": 0.1159},
    "text_encoder": {**_TEXT, "hidden_act": "quick_gelu"},
    "text_encoder_2": {"vocab_size": T5_VOCAB_SIZE, "d_model": 32, "d_kv": 8, "d_ff": 64, "num_layers": 2,
                       "num_heads": 4, "relative_attention_num_buckets": 8, "relative_attention_max_distance": 32,
                       "feed_forward_proj": "gated-gelu", "dropout_rate": 0.0, "pad_token_id": 0, "eos_token_id": 1,
                       "decoder_start_token_id": 0},
    "t5_max_length": 64,
    "scheduler": {"num_train_timesteps": 1000, "shift": 3.0, "use_dynamic_shifting": True, "base_shift": 0.5,
                  "max_shift": 1.15, "base_image_seq_len": 256, "max_image_seq_len": 4096},
}


def build_flux(out_dir: Path, seed: int) -> None:
    """A FLUX.1-dev-layout pipeline directory."""
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        FluxPipeline,
        FluxTransformer2DModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    from lora_factory.models.t5_tokenizer import build_t5_tokenizer

    cfg = FLUX_CONFIG
    with seeded(seed):
        transformer = FluxTransformer2DModel(**cfg["transformer"])
    with seeded(seed + 1):
        vae = AutoencoderKL(**cfg["vae"])
    with seeded(seed + 2):
        text_encoder = CLIPTextModel(CLIPTextConfig(**cfg["text_encoder"]))
    with seeded(seed + 3):
        text_encoder_2 = T5EncoderModel(T5Config(**cfg["text_encoder_2"]))
    pipe = FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**cfg["scheduler"]), vae=vae, text_encoder=text_encoder,
        tokenizer=build_clip_tokenizer(), text_encoder_2=text_encoder_2,
        tokenizer_2=build_t5_tokenizer(cfg["t5_max_length"]), transformer=transformer,
    )
    pipe.save_pretrained(out_dir, safe_serialization=True)
    write_vocab_files(out_dir / "tokenizer")
