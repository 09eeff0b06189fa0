"""Optimizers and learning-rate schedules, and the one way the loop changes the LR on the fly."""

from __future__ import annotations

from typing import Any

import torch

from lora_factory.config import TrainConfig
from lora_factory.errors import StageError


def make_optimizer(cfg: TrainConfig, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """AdamW, or bitsandbytes' 8-bit AdamW (imported only when asked for: it is CUDA-minded and
    prints kernel warnings at import time)."""
    kwargs: dict[str, Any] = {"lr": cfg.learning_rate, "betas": (0.9, 0.999), "weight_decay": 1e-2,
                              "eps": 1e-8}
    if cfg.optimizer == "adamw8bit":
        try:
            import bitsandbytes as bnb
        except ImportError as e:
            raise StageError(f"train.optimizer 'adamw8bit' needs bitsandbytes ({e}); use 'adamw'") from e
        return bnb.optim.AdamW8bit(params, **kwargs)
    return torch.optim.AdamW(params, **kwargs)


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
