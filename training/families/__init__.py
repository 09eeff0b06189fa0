"""Model families: what the training loop needs to know about one kind of base model.

The loop is the same for every family (latents from the VAE, noise, a prediction, a loss, the
optimizer step); what differs sits behind ``ModelFamily``: how captions become the model's
prompt tensors, how latents are noised and what the target is, how the denoiser is called (with
its extra conditioning, such as SDXL's size/crop time ids), and the loss. The UNet families share
``unet.UNetFamily`` (DDPM noise, epsilon / v-prediction targets); a flow-matching transformer
such as Flux is one more module with its own noising, call and loss.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch

from lora_factory.errors import StageError

from ..dataset import Sample

Prompt = dict[str, torch.Tensor]  # batch-first tensors by name; one caption's slice is cacheable


@dataclass(frozen=True)
class Noised:
    """A batch ready for the denoiser: its input, the timesteps, and what it should predict."""

    inputs: torch.Tensor
    timesteps: torch.Tensor
    target: torch.Tensor


class ModelFamily(Protocol):
    name: str

    def noise_scheduler(self, pipe: Any) -> Any:
        """The training noise schedule, built from the pipeline's; refuses one it cannot train."""

    def latent_grid(self, pipe: Any) -> int:
        """The pixel multiple an image side must have (VAE and denoiser downsampling)."""

    def encode_prompt(self, pipe: Any, captions: list[str], device: torch.device) -> Prompt:
        """The text encoders' outputs for ``captions`` (with gradients when they train)."""

    def add_noise(self, scheduler: Any, latents: torch.Tensor, generator: torch.Generator,
                  noise_offset: float) -> Noised:
        """Noise and timesteps drawn from ``generator`` (in that order), the noised input, the target."""

    def predict(self, pipe: Any, noised: Noised, prompt: Prompt, samples: list[Sample]) -> torch.Tensor:
        """The denoiser's prediction for the noised batch."""

    def loss(self, scheduler: Any, prediction: torch.Tensor, noised: Noised,
             snr_gamma: float | None) -> torch.Tensor:
        """The scalar training loss."""


def family_for(name: str) -> ModelFamily:
    """The family called ``name``; a one-line error naming the known ones otherwise."""
    from .sd15 import SD15
    from .sdxl import SDXL

    known: dict[str, ModelFamily] = {f.name: f for f in (SD15(), SDXL())}
    if name not in known:
        raise StageError(f"unknown base model family {name!r}; expected one of {tuple(known)}")
    return known[name]
