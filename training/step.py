"""One training step, as diffusers' ``train_text_to_image_lora.py`` writes it: latents, noise and
timesteps, the model's prediction, the loss, backward, clip, optimizer step — plus the two things
that script leaves out: gradient all-reduce across processes and a NaN guard.

The step syncs with the host once: the NaN guard has to decide on the host whether to apply the
update (``GradScaler`` does the same), and the step's loss and gradient norm travel in that one
transfer. Everything else a step could report (the LoRA norm, memory) is computed only when a
callback reads it (``training.metrics``).
"""

from __future__ import annotations

import logging
import math
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch

from lora_factory.config import TrainConfig

from .callbacks import Diverged
from .conditioning import Conditioner
from .dataset import Sample, augment, group_batches
from .distributed import World, average_gradients, sum_across
from .families import ModelFamily, denoiser_of
from .optim import scale_lr
from .prior import class_draws
from .setup import TrainData
from .state import LoopState

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Model:
    """What a step runs: the pipeline, its family, the training noise schedule, the conditioner."""

    pipe: Any
    family: ModelFamily
    scheduler: Any
    cond: Conditioner
    device: torch.device
    weight_dtype: torch.dtype

    def autocast(self) -> AbstractContextManager[Any]:
        """Mixed precision's autocast; in fp32 no context at all (a disabled ``torch.autocast``
        still costs tens of microseconds a step, a visible share of a tiny model's step)."""
        if self.weight_dtype == torch.float32:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.weight_dtype)


@dataclass(frozen=True)
class StepReport:
    """A finished optimizer step: its loss (NaN when skipped), what was skipped, and what the
    metrics need."""

    step: int
    loss: float
    grad_norm: float
    lr: float  # the rate the step was taken with
    skipped: bool
    samples: int
    seconds: float
    prior_loss: float | None
    diverged: Diverged | None = None


def batch_loss(model: Model, samples: list[Sample], generator: torch.Generator | None,
               noise_generator: torch.Generator, noise_offset: float, snr_gamma: float | None) -> torch.Tensor:
    """One micro-batch's loss. Draws, in order: the VAE sample (``generator``; ``None``: the
    mode), then noise and timesteps (``noise_generator``)."""
    latents = model.cond.latents(samples, generator)
    noised = model.family.add_noise(model.scheduler, latents, noise_generator, noise_offset)
    with model.autocast():
        prompt = model.cond.prompt(samples)
        prediction = model.family.predict(model.pipe, noised, prompt, samples)
    return model.family.loss(model.scheduler, prediction, noised, snr_gamma)


def next_samples(data: TrainData, state: LoopState, cfg: TrainConfig, world: World) -> list[Sample]:
    """This rank's batch: each rank takes its own of the world's next ``world.size`` batches."""
    draws = [state.order.next_batch() for _ in range(world.size)][world.rank]
    return [augment(data.train, d, random_flip=cfg.random_flip, caption_dropout=cfg.caption_dropout,
                    shuffle_tags=cfg.shuffle_tags, keep_tokens=cfg.keep_tokens) for d in draws]


def train_step(model: Model, data: TrainData, state: LoopState, cfg: TrainConfig, seed: int,
               world: World) -> StepReport:
    """Forward and backward over the accumulated micro-batches, then the guarded update."""
    step, accum, started = state.step + 1, cfg.gradient_accumulation_steps, time.perf_counter()
    state.optimizer.zero_grad(set_to_none=True)
    # The step's (and the prior's) mean loss, summed on the device in float64 like Python floats.
    loss_sum = prior_sum = torch.zeros((), dtype=torch.float64, device=model.device)
    n_samples = 0
    for micro in range(accum):
        samples = next_samples(data, state, cfg, world)
        loss = batch_loss(model, samples, state.generator, state.generator, cfg.noise_offset, cfg.snr_gamma)
        n_samples += len(samples)
        if data.class_images is not None:
            # DreamBooth's prior loss: as many class images as instance images, own forward
            # (class images are square, instance batches come in any bucket).
            draws = class_draws(step, micro, accum, len(samples), len(data.class_images), seed)
            prior = batch_loss(model, [data.class_images.sample(d.index) for d in draws], state.generator,
                               state.generator, cfg.noise_offset, cfg.snr_gamma)
            prior_sum = prior_sum + prior.detach().double() / accum
            loss = loss + cfg.prior_loss_weight * prior
            n_samples += len(draws)
        state.scaler.scale(loss / accum).backward()
        loss_sum = loss_sum + loss.detach().double() / accum
    lr = state.lr
    finite, loss_value, grad_norm, prior_loss = _reduce_and_clip(state, loss_sum, prior_sum,
                                                                 cfg.max_grad_norm, world)
    diverged = _apply_update(state, finite, step, lr, cfg)
    state.scaler.update()
    state.lr_scheduler.step()
    state.step = step
    return StepReport(step, loss_value if finite else float("nan"), grad_norm, lr, not finite,
                      n_samples * world.size, time.perf_counter() - started,
                      prior_loss if data.class_images is not None else None, diverged)


def _reduce_and_clip(state: LoopState, loss_sum: torch.Tensor, prior_sum: torch.Tensor, max_grad_norm: float,
                     world: World) -> tuple[bool, float, float, float]:
    """Average gradients and losses over the ranks (the prior loss stays this rank's), unscale
    (fp16), clip; then the step's one host transfer. A non-finite loss on any rank makes the
    sum non-finite on all."""
    if world.active:
        average_gradients(state.params, world)
        loss_sum = sum_across(loss_sum, world)
    state.scaler.unscale_(state.optimizer)
    grad_norm = torch.nn.utils.clip_grad_norm_(state.params, max_grad_norm)
    loss_value, norm, prior_loss = torch.stack([loss_sum, grad_norm.to(loss_sum), prior_sum]).tolist()
    loss_value /= world.size
    # fp16: the GradScaler owns inf gradients (it skips the step and lowers its scale).
    finite = math.isfinite(loss_value) and (state.scaler.is_enabled() or math.isfinite(norm))
    return finite, loss_value, norm, prior_loss


def _apply_update(state: LoopState, finite: bool, step: int, lr: float, cfg: TrainConfig) -> Diverged | None:
    """The optimizer step, or the NaN guard: skip the update (the weights stay good), lower the
    LR, and give up after ``nan_max_consecutive`` bad steps in a row."""
    if finite:
        state.scaler.step(state.optimizer)
        state.nan_streak = 0
        return None
    state.optimizer.zero_grad(set_to_none=True)
    state.nan_streak += 1
    scale_lr(state.lr_scheduler, state.optimizer, cfg.nan_lr_factor)
    if state.nan_streak >= cfg.nan_max_consecutive:
        return Diverged(
            f"training diverged at step {step}: the loss or gradient was not finite for "
            f"{state.nan_streak} steps in a row (skipped, LR lowered to {lr * cfg.nan_lr_factor:g}); "
            f"lower train.learning_rate (now {cfg.learning_rate:g}) or turn off mixed precision")
    log.warning("step %d: non-finite loss/gradient, update skipped, LR lowered", step)
    return None


def validate(model: Model, data: TrainData, cfg: TrainConfig, seed: int) -> float:
    """Mean MSE on the held-out images with fixed noise and timesteps (a generator re-seeded for
    every pass, the VAE mode instead of a sample): the same weights give the same value."""
    assert data.validation is not None
    gen = torch.Generator(model.device).manual_seed(seed + 104_729)
    total, count = 0.0, 0
    denoiser = denoiser_of(model.pipe)
    denoiser.eval()
    with torch.no_grad():
        for indices in group_batches(list(range(len(data.validation))), data.validation.buckets,
                                     cfg.batch_size):
            samples = [data.validation.sample(j) for j in indices]
            loss = batch_loss(model, samples, None, gen, 0.0, None)
            total += float(loss) * len(samples)
            count += len(samples)
    denoiser.train()
    return total / count
