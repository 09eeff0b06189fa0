"""The memory model against the real thing on the CPU: its parameter and optimizer parts against
the storages a training step of the tiny and a mid-size UNet really holds, its family table
against the models' own configs, and the meta-device activation trace against a real CPU trace.
(Whole-step peaks against measured process memory are in bench/tune.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lora_factory.config import TrainConfig
from training.tuner import FAMILIES, estimate, family_row
from training.tuner.families import denoiser_config
from training.tuner.rules import ATTENTION
from training.tuner.trace import (
    MIDSIZE_UNET,
    build_unet,
    lora_parameters_per_rank,
    row_for_unet,
    saved_bytes,
    trace_unet,
    unet_inputs,
)

MID = MIDSIZE_UNET


def storage_bytes(tensors) -> int:
    seen = {}
    for t in tensors:
        if torch.is_tensor(t):
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    return sum(seen.values())


def make_optimizer(name: str, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """The optimizer classes the trainer offers (train.optimizer)."""
    if name == "adamw8bit":
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit(params, lr=1e-4)
    if name == "prodigy":
        from prodigyopt import Prodigy

        return Prodigy(params, lr=1.0)
    return torch.optim.AdamW(params, lr=1e-4)


def one_step(config: dict, cfg: TrainConfig, dtype: torch.dtype) -> dict[str, int]:
    """Build, train one step at 64 px, and measure what each part really holds."""
    unet = build_unet(config, cfg.rank, list(cfg.target_modules or ATTENTION), dtype, device="cpu")  # None: the UNet default
    unet.train()
    named = {n: p for n, p in unet.named_parameters() if p.requires_grad}
    optimizer = make_optimizer(cfg.optimizer, list(named.values()))
    args, kwargs = unet_inputs(config, 64, 1, dtype, "cpu")
    with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
        loss = unet(*args, **kwargs).sample.float().pow(2).mean()
    loss.backward()
    optimizer.step()
    trainable = list(named.values())
    frozen = [p for p in unet.parameters() if not p.requires_grad]
    # Per-tensor step counters (0-d tensors, 4 bytes per LoRA matrix) are not per-parameter state.
    states = [v for p in trainable for v in optimizer.state[p].values() if torch.is_tensor(v) and v.dim() > 0]
    return {"weights": storage_bytes(frozen), "lora": storage_bytes(trainable),
            "gradients": storage_bytes(p.grad for p in trainable), "optimizer": storage_bytes(states)}


@pytest.mark.parametrize(("name", "config", "rank", "optimizer", "precision"), [
    ("tiny", "tiny-sd15", 4, "adamw", "no"), ("tiny", "tiny-sd15", 4, "adamw", "bf16"),
    ("tiny", "tiny-sd15", 4, "prodigy", "no"), ("tiny", "tiny-sd15", 4, "adamw8bit", "no"),
    ("tiny", "tiny-sdxl", 8, "adamw", "bf16"), ("mid", "mid", 64, "adamw", "no"), ("mid", "mid", 64, "adamw8bit", "no"),
])
def test_parameter_and_optimizer_parts_match_measured_storages(name: str, config: str, rank: int, optimizer: str,
                                                               precision: str) -> None:
    unet_config = MID if config == "mid" else denoiser_config(config)
    row = row_for_unet(unet_config, 64, activations=False)  # the parts compared here need none
    cfg = TrainConfig(rank=rank, optimizer=optimizer, mixed_precision=precision, device="cpu",
                      learning_rate=1.0 if optimizer == "prodigy" else 1e-4)
    measured = one_step(unet_config, cfg, torch.bfloat16 if precision == "bf16" else torch.float32)
    est = estimate(cfg, row)
    assert est.weights == measured["weights"]
    assert est.lora == measured["lora"] and est.gradients == measured["gradients"]
    if optimizer == "adamw8bit":
        # bitsandbytes adds a 2 KiB quantile map per tensor and keeps tensors under 4096 elements
        # in 32-bit: the rank-64 mid-size LoRA's tensors are all that large.
        assert name == "tiny" or abs(est.optimizer - measured["optimizer"]) <= 0.15 * measured["optimizer"]
        assert name == "mid" or est.optimizer <= measured["optimizer"]
    elif optimizer == "prodigy":
        # Four fp32 states per parameter, but its copy of the initial weights skips some: a bound.
        assert measured["optimizer"] <= est.optimizer <= 1.25 * measured["optimizer"]
    else:
        assert est.optimizer == measured["optimizer"]


def test_the_family_table_matches_the_models_configs() -> None:
    import diffusers

    for row in FAMILIES.values():
        with torch.device("meta"):
            unet = getattr(diffusers, row.denoiser_class)(**denoiser_config(row.architecture))
        assert sum(p.numel() for p in unet.parameters()) == row.denoiser_params, row.name
        assert {t: lora_parameters_per_rank(unet, t) for t in row.lora_per_rank} == dict(row.lora_per_rank), row.name


@pytest.mark.parametrize(("ref", "family"), [("tiny:sd", "sd15"), ("tiny:sdxl", "sdxl")])
def test_the_tiny_rows_count_the_tiny_pipelines(ref: str, family: str, model_cache: Path) -> None:
    from lora_factory.models import load_pipeline

    pipe = load_pipeline(ref, family, model_cache)
    row = family_row(f"tiny-{family}")
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    encoders = [pipe.text_encoder] + ([pipe.text_encoder_2] if family == "sdxl" else [])
    assert count(pipe.unet) == row.denoiser_params
    assert sum(count(e) for e in encoders) == row.text_encoder_params and count(pipe.vae) == row.vae_params
    peft_counted = build_unet(dict(pipe.unet.config), 1, list(ATTENTION), torch.float32, device="meta")
    assert sum(p.numel() for p in peft_counted.parameters() if p.requires_grad) == sum(
        row.lora_per_rank[t] for t in ATTENTION)
    assert row.vae_first_channels == pipe.vae.config.block_out_channels[0]


@pytest.mark.parametrize("name", ["tiny-sd15", "tiny-sdxl"])
def test_the_tiny_rows_activations_are_their_trace(name: str) -> None:
    row = family_row(name)
    for precision, dtype in (("half", torch.float16), ("full", torch.float32)):
        traced = trace_unet(denoiser_config(row.architecture), row.resolution, dtype)
        assert traced.saved_bytes == row.activations[(precision, False)]
        assert traced.saved_bytes_checkpointed == row.activations[(precision, True)]


@pytest.mark.parametrize(("config", "resolution"), [("tiny-sd15", 64), ("tiny-sdxl", 64), ("mid", 128)])
def test_the_meta_trace_agrees_with_a_real_cpu_trace(config: str, resolution: int) -> None:
    """The fused-attention stand-in keeps what PyTorch's own CPU kernel keeps, within 10%."""
    unet_config = MID if config == "mid" else denoiser_config(config)
    real = build_unet(unet_config, 4, list(ATTENTION), torch.float32, device="cpu")
    real.train()
    cpu, _ = saved_bytes(real, unet_config, resolution, 1, torch.float32, device="cpu", fused=False)
    meta = trace_unet(unet_config, resolution, torch.float32).saved_bytes
    assert abs(meta - cpu) <= 0.10 * cpu, (meta, cpu)


# The text-embedding cache frees the text encoders (Flux, SD3) before the denoiser loads: two phases -----------

@pytest.mark.parametrize("name", ["flux", "sd3", "tiny-flux", "tiny-sd3"])
def test_the_encoders_freed_after_caching_are_held_only_while_the_captions_are_encoded(name: str) -> None:
    row = family_row(name)
    cached = TrainConfig(resolution=row.resolution, rank=16, mixed_precision="bf16", gradient_checkpointing=True)
    encoder_bytes = 2 * row.freed_encoder_params  # bf16
    with_cache = estimate(cached, row)
    for uncached in (cached.model_copy(update={"cache_text_embeddings": False}),
                     cached.model_copy(update={"train_text_encoder": True}),
                     cached.model_copy(update={"shuffle_tags": True})):  # the trainer caches none of these
        held = estimate(uncached, row)
        assert held.freed_encoders == 0 and held.encode_total == 0 and held.total == held.train_total
        assert held.weights - with_cache.weights == encoder_bytes
    assert with_cache.freed_encoders == encoder_bytes > 0
    assert row.freed_encoder_params == row.text_encoder_params  # every text encoder goes
    # Encoding: the text encoders and the fp32 VAE; the denoiser is loaded after they are freed.
    assert with_cache.encode_weights == 4 * row.vae_params
    assert with_cache.encode_total == 4 * row.vae_params + encoder_bytes + with_cache.encode_runtime
    assert with_cache.total == max(with_cache.train_total, with_cache.encode_total)
    assert with_cache.total < estimate(cached.model_copy(update={"cache_text_embeddings": False}), row).total
    # Prior preservation loads the whole pipeline first (class images): the encoding phase holds it all.
    prior = estimate(cached.model_copy(update={"prior_preservation": True}), row)
    assert prior.encode_weights == prior.weights and prior.encode_total > with_cache.encode_total


def test_flux_rank16_at_1024px_matches_the_published_trainer_figures() -> None:
    """Estimates (no GPU here), held to what other trainers publish for a FLUX.1-dev rank-16 LoRA
    at 1024 px with checkpointing and 8-bit AdamW: under 24 GB with an 8-bit base, under 16 GB
    with NF4; about 11 GiB (NF4: the caption-encoding phase, T5-XXL in bf16, is the peak) and
    about 29 GiB with a bf16 base."""
    row, gb = family_row("flux"), 1e9
    cfg = TrainConfig(resolution=1024, rank=16, mixed_precision="bf16", gradient_checkpointing=True,
                      optimizer="adamw8bit", device="cuda")
    nf4, int8, bf16 = (estimate(cfg.model_copy(update={"base_quantization": q}), row) for q in ("nf4", "int8", "none"))
    assert nf4.total < 16 * gb and 10 <= nf4.gib() <= 12 and nf4.peak_phase == "encoding captions"
    assert int8.total < 24 * gb and int8.peak_phase == "training steps"
    assert 27 <= bf16.gib() <= 31
    for est in (nf4, int8, bf16):  # the larger phase, not the sum
        assert est.total == max(est.train_total, est.encode_total) < est.train_total + est.encode_total


def test_a_4bit_flux_peaks_while_the_text_encoders_encode_the_captions() -> None:
    """NF4 shrinks the transformer below T5-XXL in bf16: encoding the captions, before the
    encoders are freed, holds more than a training step does, and the estimate says so."""
    row = family_row("flux")
    cfg = TrainConfig(resolution=512, rank=16, mixed_precision="bf16", gradient_checkpointing=True,
                      optimizer="adamw8bit", base_quantization="nf4")
    est = estimate(cfg, row)
    assert est.peak_phase == "encoding captions" and est.total == est.encode_total > est.train_total
    assert any(part.startswith("peak phase: encoding captions") for part, _ in est.table())
    no_cache = estimate(cfg.model_copy(update={"cache_text_embeddings": False}), row)
    assert no_cache.peak_phase == "training steps" and no_cache.total > est.total
    # Rows without a freed encoder keep one phase.
    sdxl = estimate(TrainConfig(resolution=1024, mixed_precision="bf16"), family_row("sdxl"))
    assert sdxl.freed_encoders == 0 and sdxl.total == sdxl.train_total


@pytest.mark.parametrize(("ref", "row_name"), [("tiny:flux", "tiny-flux"), ("tiny:sd3", "tiny-sd3")])
def test_the_freed_encoder_is_the_one_the_trainer_unloads(ref: str, row_name: str, model_cache: Path) -> None:
    from lora_factory.models import load_pipeline
    from training.families import family_for
    from training.lora import text_encoders

    pipe = load_pipeline(ref, None, model_cache)
    family, row = family_for(row_name.removeprefix("tiny-")), family_row(row_name)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert sum(count(getattr(pipe, n)) for n in text_encoders(pipe)) == row.text_encoder_params
    assert sum(count(getattr(pipe, n)) for n in family.unloadable_encoders) == row.freed_encoder_params


def test_the_sd35_medium_text_encoders_and_vae_count_from_their_configs() -> None:
    """stabilityai/stable-diffusion-3.5-medium: text_encoder (CLIP-L with its projection),
    text_encoder_2 (OpenCLIP bigG with its projection), text_encoder_3 (T5-v1.1-XXL encoder) and the
    16-channel VAE without quant convs — the configs Stability's reference code (sd3_infer.py) and
    diffusers' scripts/convert_sd3_to_diffusers.py give; counted on the meta device."""
    from diffusers import AutoencoderKL
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    from training.tuner.families import CLIP_L_PROJ, FLUX_VAE, OPENCLIP_BIGG, T5_XXL_ENCODER

    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    with torch.device("meta"):
        clip_l = CLIPTextModelWithProjection(CLIPTextConfig(
            hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
            projection_dim=768, hidden_act="quick_gelu"))
        clip_g = CLIPTextModelWithProjection(CLIPTextConfig(
            hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
            projection_dim=1280, hidden_act="gelu"))
        t5 = T5EncoderModel(T5Config(d_model=4096, d_ff=10240, d_kv=64, num_heads=64, num_layers=24,
                                     vocab_size=32128, feed_forward_proj="gated-gelu"))
        vae = AutoencoderKL(latent_channels=16, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
                            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                            use_quant_conv=False, use_post_quant_conv=False)
    assert (count(clip_l), count(clip_g), count(t5), count(vae)) == (CLIP_L_PROJ, OPENCLIP_BIGG, T5_XXL_ENCODER,
                                                                     FLUX_VAE)
    row = family_row("sd3")
    assert row.text_encoder_params == CLIP_L_PROJ + OPENCLIP_BIGG + T5_XXL_ENCODER and row.vae_params == FLUX_VAE
    assert row.freed_encoder_params == row.text_encoder_params  # all three are freed after caching
