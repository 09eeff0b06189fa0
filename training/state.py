"""The training loop's state: one dataclass holding everything the loop changes as it runs.

A checkpoint saves exactly this (``state_dict``: the LoRA weights go to their own file) and a
resume restores exactly this (``load_state_dict``); the rest of a run (models, data, settings) is
rebuilt from the job. The keys of ``state_dict`` are the checkpoint format (``training.checkpoints``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from . import checkpoints as ckpt
from .callbacks import CallbackList
from .dataset import DataOrder
from .distributed import World, gather_objects


@dataclass
class LoopState:
    weights: dict[str, torch.nn.Parameter]  # the trainable (LoRA) parameters by checkpoint name
    optimizer: torch.optim.Optimizer
    lr_scheduler: Any
    scaler: torch.amp.GradScaler
    generator: torch.Generator  # every draw of the loop: VAE samples, noise, timesteps
    order: DataOrder  # epoch and position in the seeded data order
    callbacks: CallbackList  # their memory (early-stopping window, plateau counter)
    dataset_hash: str  # what the run was made from: a resume checks both
    config_hash: str
    step: int = 0
    losses: list[float] = field(default_factory=list)  # every finite step's loss
    ema: float = 0.0  # the loss's exponential moving average (bias-corrected in loss_smoothed)
    ema_count: int = 0
    nan_streak: int = 0  # non-finite steps in a row
    val_loss: float | None = None
    best_metric: float | None = None
    best_step: int | None = None

    @property
    def params(self) -> list[torch.nn.Parameter]:
        return list(self.weights.values())

    @property
    def lr(self) -> float:
        return float(self.lr_scheduler.get_last_lr()[0])

    def record_loss(self, loss: float, smoothing: float) -> None:
        """A finite step's loss into the history and the moving average."""
        self.losses.append(loss)
        self.ema_count += 1
        self.ema = smoothing * self.ema + (1 - smoothing) * loss

    def loss_smoothed(self, smoothing: float) -> float | None:
        """The bias-corrected moving average; ``None`` before the first finite step."""
        return None if self.ema_count == 0 else self.ema / (1 - smoothing ** self.ema_count)

    def state_dict(self, world: World) -> dict[str, Any]:
        """The checkpoint's ``state.pt``. Every rank calls it (it gathers the ranks' generators)."""
        return {
            "step": self.step, "epoch": self.order.epoch, "data_order": self.order.state_dict(),
            "optimizer": self.optimizer.state_dict(), "lr_scheduler": self.lr_scheduler.state_dict(),
            "scaler": self.scaler.state_dict(), "rng": ckpt.rng_states(self.generator),
            "losses": list(self.losses), "ema": self.ema, "ema_count": self.ema_count,
            "nan_streak": self.nan_streak, "val_loss": self.val_loss, "best_metric": self.best_metric,
            "best_step": self.best_step, "callbacks": self.callbacks.state_dict(),
            "dataset_hash": self.dataset_hash, "config_hash": self.config_hash,
            "rank_generators": gather_objects(self.generator.get_state(), world),
        }

    def load_state_dict(self, saved: dict[str, Any], world: World) -> None:
        self.optimizer.load_state_dict(saved["optimizer"])
        self.lr_scheduler.load_state_dict(saved["lr_scheduler"])
        self.scaler.load_state_dict(saved["scaler"])
        ckpt.restore_rng_states(saved["rng"], self.generator)
        self.generator.set_state(saved["rank_generators"][world.rank])
        self.order.load_state_dict(saved["data_order"])
        self.callbacks.load_state_dict(saved["callbacks"])
        self.losses, self.ema, self.ema_count = list(saved["losses"]), saved["ema"], saved["ema_count"]
        self.nan_streak, self.val_loss = saved["nan_streak"], saved["val_loss"]
        self.step, self.best_metric, self.best_step = saved["step"], saved["best_metric"], saved["best_step"]

    def load_weights(self, weights: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for name, p in self.weights.items():
                p.copy_(weights[name].to(p.device, p.dtype))
