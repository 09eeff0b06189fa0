"""A tiny Stable Diffusion 3.5 Medium pipeline: the real diffusers and transformers classes at
toy widths.

Layout as the hub repository: ``SD3Transformer2DModel`` (MMDiT joint blocks, SD3.5's dual
attention in the first block and RMS q/k norms, 2x2 patches), an SD3-style ``AutoencoderKL``
(16 latent channels, no quant convs, SD3's shift and scale factors, 8x downsampling), two CLIP
text encoders with projection (CLIP-L: quick GELU, pads with ``<|endoftext|>``; OpenCLIP bigG:
GELU, pads with ``!``) whose pooled projections are concatenated, a T5 v1.1 encoder with the
tokenizer trained offline (``t5_tokenizer``), and SD3's scheduler config (a fixed shift of 3).
Differences from the real model: the widths, two joint blocks, T5's 64-token budget.

Widths follow SD3's rule: the CLIP hidden states side by side (32 + 32) are padded to T5's width,
so T5's ``d_model`` (the transformer's ``joint_attention_dim``) is 64.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lora_factory.models.clip_tokenizer import build_clip_tokenizer, write_vocab_files
from lora_factory.models.seeding import seeded
from lora_factory.models.t5_tokenizer import T5_VOCAB_SIZE
from lora_factory.models.tiny_diffusion import _TEXT, _VAE

SD3_CONFIG: dict[str, Any] = {
    "transformer": {
        "sample_size": 8,  # latents; x8 VAE -> 64 px
        "patch_size": 2,
        "in_channels": 16,
        "out_channels": 16,
        "num_layers": 2,
        "attention_head_dim": 16,
        "num_attention_heads": 2,
        "joint_attention_dim": 64,  # T5's d_model
        "caption_projection_dim": 32,  # = heads x head width
        "pooled_projection_dim": 64,  # the two CLIP projections side by side
        "pos_embed_max_size": 32,  # up to 512 px
        "dual_attention_layers": [0],
        "qk_norm": "rms_norm",
    },
    "vae": {**_VAE, "latent_channels": 16, "use_quant_conv": False, "use_post_quant_conv": False,
            "scaling_factor": 1.5305, "shift_factor": 0.0609},
    "text_encoder": {**_TEXT, "hidden_act": "quick_gelu"},
    "text_encoder_2": {**_TEXT, "hidden_act": "gelu"},
    "text_encoder_3": {"vocab_size": T5_VOCAB_SIZE, "d_model": 64, "d_kv": 16, "d_ff": 128, "num_layers": 2,
                       "num_heads": 4, "relative_attention_num_buckets": 8, "relative_attention_max_distance": 32,
                       "feed_forward_proj": "gated-gelu", "dropout_rate": 0.0, "pad_token_id": 0, "eos_token_id": 1,
                       "decoder_start_token_id": 0},
    "t5_max_length": 64,
    "scheduler": {"num_train_timesteps": 1000, "shift": 3.0},
}


def build_sd3(out_dir: Path, seed: int) -> None:
    """A stable-diffusion-3.5-medium-layout pipeline directory."""
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    from lora_factory.models.t5_tokenizer import build_t5_tokenizer

    cfg = SD3_CONFIG
    with seeded(seed):
        transformer = SD3Transformer2DModel(**cfg["transformer"])
    with seeded(seed + 1):
        vae = AutoencoderKL(**cfg["vae"])
    with seeded(seed + 2):
        text_encoder = CLIPTextModelWithProjection(CLIPTextConfig(**cfg["text_encoder"]))
    with seeded(seed + 3):
        text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**cfg["text_encoder_2"]))
    with seeded(seed + 4):
        text_encoder_3 = T5EncoderModel(T5Config(**cfg["text_encoder_3"]))
    pipe = StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(**cfg["scheduler"]), vae=vae,
        text_encoder=text_encoder, tokenizer=build_clip_tokenizer(),
        text_encoder_2=text_encoder_2, tokenizer_2=build_clip_tokenizer(pad_token="!"),
        text_encoder_3=text_encoder_3, tokenizer_3=build_t5_tokenizer(cfg["t5_max_length"]),
    )
    pipe.save_pretrained(out_dir, safe_serialization=True)
    for folder in ("tokenizer", "tokenizer_2"):
        write_vocab_files(out_dir / folder)
