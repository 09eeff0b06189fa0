"""Model families as table rows: the sizes the memory model and the rules need of each.

A new family (a flow-matching transformer such as Flux) is a new row here and in
``rules.PRIORS``, not new code. The figures come from the models' own configs (parameter
counts) and from ``training.tuner.trace`` (activations kept for backward, traced on the meta
device with a fused attention kernel); ``tests/test_tuner_memory.py`` recounts the parameters
and retraces the tiny rows, and ``bench/tune.py`` retraces SD1.5 and SDXL.

Rows named ``tiny-*`` are the factory's own tiny random-init models (``tiny:sd``, ``tiny:sdxl``):
the same architectures at toy widths, so their memory and their sensible settings differ.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from lora_factory.errors import ConfigError

MIB = 2**20
GIB = 2**30
VAE_LIVE_MAPS = 5


@dataclass(frozen=True)
class FamilyRow:
    """One model family (or a tiny stand-in of one) as the tuner sees it."""

    name: str
    base_family: str  # the trainer's family (``models.base_family``)
    architecture: str  # key of DENOISER_CONFIGS (what trace.py traces)
    resolution: int  # native training resolution, px
    min_resolution: int  # the memory fit goes no lower
    bucket_step: int  # px multiple of the aspect buckets
    denoiser_params: int
    text_encoder_params: int  # every text encoder together
    vae_params: int
    lora_per_rank: Mapping[str, int]  # trainable LoRA parameters per unit of rank, per target module
    text_encoder_lora_per_rank: int  # q/k/v/out_proj of every text encoder
    # Bytes kept for backward per sample at ``resolution``: (weights' precision, checkpointing).
    activations: Mapping[tuple[str, bool], int]
    vae_first_channels: int  # the VAE encoder's widest full-resolution feature map
    seconds_per_step: float  # assumed s/step at ``resolution``, batch 1 (time budgets only)
    note: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)
    # The trainer family's LoRA targets (train.target_modules unset), as in training.families.
    default_targets: tuple[str, ...] = ("to_k", "to_q", "to_v", "to_out.0")
    denoiser_class: str = "UNet2DConditionModel"  # the diffusers class of DENOISER_CONFIGS' config
    # Of text_encoder_params, the encoders the trainer frees once the text cache holds every
    # caption, before it loads the denoiser (the family's ``unloadable_encoders``: every text
    # encoder of Flux and SD3).
    freed_encoder_params: int = 0

    def activation_bytes(self, precision: str, checkpointing: bool, resolution: int, batch: int) -> int:
        """Activations of a step: linear in pixels (convolutions and fused attention both are) and
        in the batch."""
        per_sample = self.activations[(precision, checkpointing)]
        return int(per_sample * (resolution / self.resolution) ** 2 * batch)

    def vae_encode_bytes(self, resolution: int, batch: int) -> int:
        """Peak of encoding a batch (no grad, fp32): five of the encoder's first-block feature
        maps are alive at once (measured on the CPU: bench/tune.py)."""
        return VAE_LIVE_MAPS * self.vae_first_channels * resolution * resolution * 4 * batch


_SD15_LORA = {"to_q": 49920, "to_k": 49728, "to_v": 49728, "to_out.0": 49920, "proj_in": 24960,
              "proj_out": 24960, "ff.net.0.proj": 112320, "ff.net.2": 62400}
_SDXL_LORA = {"to_q": 332800, "to_k": 392960, "to_v": 392960, "to_out.0": 332800, "proj_in": 21760,
              "proj_out": 21760, "ff.net.0.proj": 748800, "ff.net.2": 416000}
_TINY_SD15_LORA = {"to_q": 640, "to_k": 608, "to_v": 608, "to_out.0": 640, "proj_in": 320, "proj_out": 320,
                   "ff.net.0.proj": 1440, "ff.net.2": 800}
_TINY_SDXL_LORA = {"to_q": 2048, "to_k": 2048, "to_v": 2048, "to_out.0": 2048, "proj_in": 512,
                   "proj_out": 512, "ff.net.0.proj": 4608, "ff.net.2": 2560}
CLIP_L, OPENCLIP_BIGG, SD_VAE = 123_060_480, 694_659_840, 83_653_863
T5_XXL_ENCODER, FLUX_VAE, TINY_T5, TINY_FLUX_VAE = 4_762_310_656, 83_819_683, 53_440, 258_379
_FLUX_TARGETS = ("attn.to_k", "attn.to_q", "attn.to_v", "attn.to_out.0", "attn.add_k_proj", "attn.add_q_proj",
                 "attn.add_v_proj", "attn.to_add_out", "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj",
                 "ff_context.net.2", "proj_mlp")
_FLUX_LORA = dict(zip(_FLUX_TARGETS, (350208, 350208, 350208, 116736, 116736, 116736, 116736, 116736, 291840,
                                      291840, 291840, 291840, 583680), strict=True))
_TINY_FLUX_LORA = dict(zip(_FLUX_TARGETS, (128, 128, 128, 64, 64, 64, 64, 64, 160, 160, 160, 160, 160), strict=True))
_SD3_TARGETS = ("attn.to_k", "attn.to_q", "attn.to_v", "attn.to_out.0", "attn.add_k_proj", "attn.add_q_proj",
                "attn.add_v_proj", "attn.to_add_out")
_SD3_LORA = dict(zip(_SD3_TARGETS, (73728,) * 7 + (70656,), strict=True))
_TINY_SD3_LORA = dict(zip(_SD3_TARGETS, (128,) * 7 + (64,), strict=True))
# SD3's CLIP encoders carry their text projection (CLIPTextModelWithProjection); the VAE is Flux's.
CLIP_L_PROJ, TINY_CLIP_PROJ, TINY_T5_SD3 = 123_650_304, 1_601_696, 147_808
# q/k/v/out_proj LoRA per rank: layers x 4 projections x (in + out).
CLIP_L_LORA, OPENCLIP_BIGG_LORA, TINY_CLIP_LORA = 12 * 4 * 1536, 32 * 4 * 2560, 2 * 4 * 64

FAMILIES: dict[str, FamilyRow] = {
    row.name: row
    for row in (
        FamilyRow(
            name="sd15", base_family="sd15", architecture="sd15", resolution=512, min_resolution=256,
            bucket_step=64, denoiser_params=859_520_964, text_encoder_params=CLIP_L, vae_params=SD_VAE,
            lora_per_rank=_SD15_LORA, text_encoder_lora_per_rank=CLIP_L_LORA,
            activations={("half", False): 1_038_582_784, ("half", True): 237_216_672,
                         ("full", False): 1_687_675_904, ("full", True): 430_788_000},
            vae_first_channels=128, seconds_per_step=0.25,
            note="Stable Diffusion 1.5 (UNet 860M, CLIP ViT-L text encoder)"),
        FamilyRow(
            name="sdxl", base_family="sdxl", architecture="sdxl", resolution=1024, min_resolution=512,
            bucket_step=64, denoiser_params=2_567_463_684, text_encoder_params=CLIP_L + OPENCLIP_BIGG,
            vae_params=SD_VAE, lora_per_rank=_SDXL_LORA, text_encoder_lora_per_rank=CLIP_L_LORA + OPENCLIP_BIGG_LORA,
            activations={("half", False): 7_780_972_864, ("half", True): 663_202_848,
                         ("full", False): 12_004_978_880, ("full", True): 1_239_174_816},
            vae_first_channels=128, seconds_per_step=1.0,
            note="Stable Diffusion XL base 1.0 (UNet 2.6B, CLIP ViT-L + OpenCLIP bigG)"),
        FamilyRow(
            name="tiny-sd15", base_family="sd15", architecture="tiny-sd15", resolution=64, min_resolution=32,
            bucket_step=16, denoiser_params=792_964, text_encoder_params=1_600_672, vae_params=248_079,
            lora_per_rank=_TINY_SD15_LORA, text_encoder_lora_per_rank=TINY_CLIP_LORA,
            activations={("half", False): 853_376, ("half", True): 303_712,
                         ("full", False): 1_288_576, ("full", True): 491_424},
            vae_first_channels=8, seconds_per_step=0.2,
            note="the factory's tiny random-init SD1.5 (tiny:sd), for CPU runs"),
        FamilyRow(
            name="tiny-sdxl", base_family="sdxl", architecture="tiny-sdxl", resolution=64, min_resolution=32,
            bucket_step=16, denoiser_params=1_360_740, text_encoder_params=1_600_672 + 1_601_696, vae_params=248_079,
            lora_per_rank=_TINY_SDXL_LORA, text_encoder_lora_per_rank=2 * TINY_CLIP_LORA,
            activations={("half", False): 1_223_808, ("half", True): 232_608,
                         ("full", False): 1_535_360, ("full", True): 364_192},
            vae_first_channels=8, seconds_per_step=0.3,
            note="the factory's tiny random-init SDXL (tiny:sdxl), for CPU runs"),
        # Flux: parameters and LoRA sizes are counted from the configs; the activations are NOT
        # traced (trace.py traces UNets): an assumption from the architecture (57 blocks of a
        # 3072-wide stream over 4096 image + 512 text tokens at 1024 px; with checkpointing each
        # block keeps its input, without it ~35 tensors of that size), to be measured on a GPU.
        FamilyRow(
            name="flux", base_family="flux", architecture="flux", resolution=1024, min_resolution=512,
            bucket_step=64, denoiser_params=11_901_408_320, text_encoder_params=CLIP_L + T5_XXL_ENCODER,
            vae_params=FLUX_VAE, lora_per_rank=_FLUX_LORA, text_encoder_lora_per_rank=CLIP_L_LORA,
            activations={("half", False): 60 * GIB, ("half", True): int(2.2 * GIB),
                         ("full", False): 120 * GIB, ("full", True): int(4.4 * GIB)},
            vae_first_channels=128, seconds_per_step=3.0, default_targets=_FLUX_TARGETS,
            denoiser_class="FluxTransformer2DModel", freed_encoder_params=CLIP_L + T5_XXL_ENCODER,
            note="FLUX.1-dev (transformer 11.9B, CLIP ViT-L + T5-XXL encoder 4.8B); activations assumed"),
        FamilyRow(
            name="tiny-flux", base_family="flux", architecture="tiny-flux", resolution=64, min_resolution=32,
            bucket_step=16, denoiser_params=81_664, text_encoder_params=1_600_672 + TINY_T5,
            vae_params=TINY_FLUX_VAE, lora_per_rank=_TINY_FLUX_LORA, text_encoder_lora_per_rank=TINY_CLIP_LORA,
            activations={("half", False): 600_000, ("half", True): 200_000,
                         ("full", False): 1_200_000, ("full", True): 400_000},
            vae_first_channels=8, seconds_per_step=0.3, default_targets=_FLUX_TARGETS,
            denoiser_class="FluxTransformer2DModel", freed_encoder_params=1_600_672 + TINY_T5,
            note="the factory's tiny random-init FLUX.1-dev (tiny:flux), for CPU runs; activations assumed"),
        # SD3.5 Medium: counted from its config; activations NOT traced, assumed as Flux's: 24
        # blocks of a 1536-wide stream over 4096 image + 333 text tokens at 1024 px.
        FamilyRow(
            name="sd3", base_family="sd3", architecture="sd3", resolution=1024, min_resolution=512,
            bucket_step=64, denoiser_params=2_243_171_520,
            text_encoder_params=CLIP_L_PROJ + OPENCLIP_BIGG + T5_XXL_ENCODER, vae_params=FLUX_VAE,
            lora_per_rank=_SD3_LORA, text_encoder_lora_per_rank=CLIP_L_LORA + OPENCLIP_BIGG_LORA,
            activations={("half", False): 12 * GIB, ("half", True): GIB // 2,
                         ("full", False): 24 * GIB, ("full", True): GIB},
            vae_first_channels=128, seconds_per_step=1.0, default_targets=_SD3_TARGETS,
            denoiser_class="SD3Transformer2DModel", freed_encoder_params=CLIP_L_PROJ + OPENCLIP_BIGG + T5_XXL_ENCODER,
            note="Stable Diffusion 3.5 Medium (MMDiT 2.2B, CLIP-L + OpenCLIP bigG + T5-XXL encoder 4.8B); "
                 "activations assumed"),
        FamilyRow(
            name="tiny-sd3", base_family="sd3", architecture="tiny-sd3", resolution=64, min_resolution=32,
            bucket_step=16, denoiser_params=90_368, text_encoder_params=2 * TINY_CLIP_PROJ + TINY_T5_SD3,
            vae_params=TINY_FLUX_VAE, lora_per_rank=_TINY_SD3_LORA, text_encoder_lora_per_rank=2 * TINY_CLIP_LORA,
            activations={("half", False): 600_000, ("half", True): 200_000,
                         ("full", False): 1_200_000, ("full", True): 400_000},
            vae_first_channels=8, seconds_per_step=0.3, default_targets=_SD3_TARGETS,
            denoiser_class="SD3Transformer2DModel", freed_encoder_params=2 * TINY_CLIP_PROJ + TINY_T5_SD3,
            note="the factory's tiny random-init SD3.5 Medium (tiny:sd3), for CPU runs; activations assumed"),
    )
}


def _sd15_unet() -> dict[str, Any]:
    """SD1.5's UNet config: diffusers' UNet2DConditionModel defaults are SD1.x's, but for the
    text width and head count."""
    return {"cross_attention_dim": 768, "attention_head_dim": 8}


def _sdxl_unet() -> dict[str, Any]:
    """stabilityai/stable-diffusion-xl-base-1.0's unet/config.json (the keys that differ from
    diffusers' defaults)."""
    return {
        "sample_size": 128, "block_out_channels": (320, 640, 1280),
        "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        "transformer_layers_per_block": (1, 2, 10), "attention_head_dim": (5, 10, 20),
        "use_linear_projection": True, "cross_attention_dim": 2048, "addition_embed_type": "text_time",
        "addition_time_embed_dim": 256, "projection_class_embeddings_input_dim": 2816,
    }


def _sd3_medium() -> dict[str, Any]:
    """stabilityai/stable-diffusion-3.5-medium's transformer/config.json, checked against
    diffusers' scripts/convert_sd3_to_diffusers.py (which derives it from the checkpoint: 24 layers
    and heads, caption projection 1536, dual attention in blocks 0-12, RMS q/k norm, 384 position
    embeddings for the 2B model) and against the configs other projects vendor."""
    return {"sample_size": 128, "patch_size": 2, "in_channels": 16, "out_channels": 16, "num_layers": 24,
            "attention_head_dim": 64, "num_attention_heads": 24, "joint_attention_dim": 4096,
            "caption_projection_dim": 1536, "pooled_projection_dim": 2048, "pos_embed_max_size": 384,
            "dual_attention_layers": tuple(range(13)), "qk_norm": "rms_norm"}


def denoiser_config(architecture: str) -> dict[str, Any]:
    """The UNet config ``trace.py`` builds for ``architecture``."""
    from lora_factory.models.tiny_diffusion import SD15_CONFIG, SDXL_CONFIG
    from lora_factory.models.tiny_flux import FLUX_CONFIG
    from lora_factory.models.tiny_sd3 import SD3_CONFIG

    configs = {"sd15": _sd15_unet, "sdxl": _sdxl_unet,
               "tiny-sd15": lambda: dict(SD15_CONFIG["unet"]), "tiny-sdxl": lambda: dict(SDXL_CONFIG["unet"]),
               # FluxTransformer2DModel's defaults are FLUX.1's; the dev model adds the guidance embedding.
               "flux": lambda: {"guidance_embeds": True}, "tiny-flux": lambda: dict(FLUX_CONFIG["transformer"]),
               "sd3": _sd3_medium, "tiny-sd3": lambda: dict(SD3_CONFIG["transformer"])}
    return configs[architecture]()


def family_row(name: str) -> FamilyRow:
    """The row for ``name``, or one line naming the families there are."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise ConfigError(f"unknown model family '{name}': choose one of {', '.join(FAMILIES)}") from None


def family_for(base_family: str | None, base_ref: str) -> FamilyRow:
    """The row a factory run trains with: its ``models.base_family`` (read from the base model
    when unset), or that family's tiny stand-in when the base model is a ``tiny:`` reference."""
    from pathlib import Path

    from lora_factory.models.families import config_family

    # The models folder is only read for local paths and hub caches, never built into.
    family = config_family(base_ref, base_family, Path("."))
    return family_row(f"tiny-{family}" if base_ref.startswith("tiny:") else family)
