"""Optimizers and learning-rate schedules, and the one way the loop changes the LR on the fly."""

from __future__ import annotations

import logging
from typing import Any

import torch

from lora_factory.config import TrainConfig
from lora_factory.errors import StageError

log = logging.getLogger(__name__)


def param_groups(cfg: TrainConfig, named: dict[str, torch.nn.Parameter]) -> list[dict[str, Any]]:
    """The denoiser's LoRA at ``learning_rate``; the text encoders' at ``text_encoder_lr``
    (kohya's split: text-encoder LoRAs overfit faster and usually want a lower rate)."""
    denoiser = [p for n, p in named.items() if not n.startswith("text_encoder")]
    text = [p for n, p in named.items() if n.startswith("text_encoder")]
    groups = [{"params": denoiser, "lr": cfg.learning_rate}]
    if text:
        groups.append({"params": text, "lr": cfg.text_encoder_lr or cfg.learning_rate})
    return groups


def make_optimizer(cfg: TrainConfig, named: dict[str, torch.nn.Parameter]) -> torch.optim.Optimizer:
    """AdamW; bitsandbytes' 8-bit AdamW (imported only when asked for: it is CUDA-minded and
    prints kernel warnings at import time); or Prodigy, which estimates its own step size (its
    ``learning_rate`` is a multiplier, normally 1.0)."""
    groups = param_groups(cfg, named)
    kwargs: dict[str, Any] = {"lr": cfg.learning_rate, "betas": (0.9, 0.999), "weight_decay": 1e-2,
                              "eps": 1e-8}
    if cfg.optimizer == "adamw8bit":
        try:
            import bitsandbytes as bnb
        except ImportError as e:
            raise StageError(f"train.optimizer 'adamw8bit' needs bitsandbytes ({e}); use 'adamw'") from e
        return bnb.optim.AdamW8bit(groups, **kwargs)
    if cfg.optimizer == "prodigy":
        try:
            from prodigyopt import Prodigy
        except ImportError as e:
            raise StageError(f"train.optimizer 'prodigy' needs prodigyopt ({e}); use 'adamw'") from e
        if cfg.learning_rate < 0.1:
            log.warning("train.optimizer 'prodigy' with learning_rate %g: Prodigy's rate is a multiplier "
                        "of its own estimate, normally 1.0", cfg.learning_rate)
        return Prodigy(groups, lr=cfg.learning_rate, betas=(0.9, 0.999), weight_decay=1e-2,
                       safeguard_warmup=cfg.lr_warmup_steps > 0, use_bias_correction=True)
    return torch.optim.AdamW(groups, **kwargs)


def make_lr_scheduler(cfg: TrainConfig, optimizer: torch.optim.Optimizer) -> Any:
    """diffusers' schedule by name. ``constant`` with warmup steps becomes
    ``constant_with_warmup``: diffusers' ``constant`` silently ignores the warmup, which is never
    what a profile that sets ``lr_warmup_steps`` means."""
    from diffusers.optimization import get_scheduler

    name = cfg.lr_scheduler
    if name == "constant" and cfg.lr_warmup_steps > 0:
        name = "constant_with_warmup"
    return get_scheduler(name, optimizer=optimizer, num_warmup_steps=cfg.lr_warmup_steps,
                         num_training_steps=cfg.max_steps)


def scale_lr(lr_scheduler: Any, optimizer: torch.optim.Optimizer, factor: float) -> None:
    """Multiply the LR for the rest of the run (NaN guard, plateau).

    diffusers' schedules are ``LambdaLR``s that recompute ``lr = base_lr * f(step)`` every step,
    so scaling only the param groups would be undone one step later; the base LRs are scaled too.
    Both live in the scheduler/optimizer state dicts, so a resumed run keeps the lowered LR.
    """
    lr_scheduler.base_lrs = [lr * factor for lr in lr_scheduler.base_lrs]
    for group in optimizer.param_groups:
        group["lr"] *= factor
        if "initial_lr" in group:
            group["initial_lr"] *= factor
    lr_scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]
