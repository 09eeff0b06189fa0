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
