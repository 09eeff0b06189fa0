"""The loss options (v-prediction target, min-SNR-γ, noise offset) and the optimizers, checked
against their formulas and on the tiny model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import DDPMScheduler

from tests.training_helpers import lora_tensors, small_cfg, tiny_job, write_dataset
from training.losses import diffusion_loss, sample_noise, training_target
from training.trainer import train_lora


def scheduler(prediction_type: str) -> DDPMScheduler:
    return DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                         prediction_type=prediction_type)


def test_v_prediction_target_is_the_velocity() -> None:
    sched = scheduler("v_prediction")
    gen = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(2, 4, 8, 8, generator=gen), torch.randn(2, 4, 8, 8, generator=gen)
    t = torch.tensor([10, 900])
    abar = sched.alphas_cumprod[t].view(-1, 1, 1, 1)
    expected = abar.sqrt() * noise - (1 - abar).sqrt() * x0
    assert torch.allclose(training_target(sched, x0, noise, t), expected, atol=1e-5)
    assert torch.equal(training_target(scheduler("epsilon"), x0, noise, t), noise)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_min_snr_weights_each_sample_by_the_clamped_snr(prediction_type: str) -> None:
    sched = scheduler(prediction_type)
    pred, target = torch.zeros(2, 1, 2, 2), torch.ones(2, 1, 2, 2)  # per-sample MSE = 1
    t = torch.tensor([5, 800])
    abar = sched.alphas_cumprod[t]
    snr = abar / (1 - abar)
    gamma = 5.0
    weights = torch.clamp(snr, max=gamma) / (snr if prediction_type == "epsilon" else snr + 1)
    assert float(diffusion_loss(pred, target, t, sched, gamma)) == pytest.approx(float(weights.mean()), rel=1e-5)
    assert float(diffusion_loss(pred, target, t, sched, None)) == pytest.approx(1.0)


def test_noise_offset_shifts_each_channel_by_a_constant() -> None:
    latents = torch.zeros(2, 4, 16, 16)
    plain = sample_noise(latents, torch.Generator().manual_seed(1), 0.0)
    offset = sample_noise(latents, torch.Generator().manual_seed(1), 0.5)
    shift = offset - plain
    # Same base draw; the difference is constant over each (sample, channel) plane and not zero.
    assert torch.allclose(shift, shift[:, :, :1, :1].expand_as(shift), atol=1e-6)
    assert float(shift.abs().mean()) > 0.05


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("ds"), [(64, 64), (80, 64), (64, 80), (96, 96)])


def test_adamw_8bit_trains_on_the_cpu(dataset: Path, model_cache: Path, tmp_path: Path) -> None:
    result = train_lora(tiny_job(dataset, small_cfg(max_steps=3, optimizer="adamw8bit"),
                                 tmp_path / "o", model_cache))
    ups = [v for k, v in lora_tensors(tmp_path / "o").items() if "lora_B" in k or "lora.up" in k]
    assert all(torch.isfinite(torch.tensor(result.losses))) and any(float(v.abs().max()) > 0 for v in ups)


def test_a_v_prediction_model_trains_with_min_snr_and_noise_offset(dataset: Path, model_cache: Path,
                                                                    tmp_path: Path) -> None:
    from lora_factory.models import load_pipeline

    pipe = load_pipeline("tiny:sd", "sd15", model_cache)
    pipe.scheduler.register_to_config(prediction_type="v_prediction")
    pipe.save_pretrained(tmp_path / "vpred", safe_serialization=True)
    cfg = small_cfg(max_steps=3, snr_gamma=5.0, noise_offset=0.05)
    result = train_lora(tiny_job(dataset, cfg, tmp_path / "v", model_cache,
                                 base_ref=str(tmp_path / "vpred"), family="sd15"))
    train_lora(tiny_job(dataset, cfg, tmp_path / "e", model_cache))
    assert all(torch.isfinite(torch.tensor(result.losses)))
    v, e = lora_tensors(tmp_path / "v"), lora_tensors(tmp_path / "e")
    assert not all(torch.equal(v[k], e[k]) for k in v)  # the target changed what was learnt
