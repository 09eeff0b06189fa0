"""What the flow-matching transformer families (Flux, SD3) share: rectified-flow noising, the
timestep sampling with the scheduler's own shift, the velocity target and the loss weighting.

Noising (as diffusers' ``train_dreambooth_lora_flux.py`` / ``_sd3.py`` and kohya's sd-scripts):
``x_σ = (1 - σ) x + σ ε`` and the model predicts the velocity ``ε - x``.

Timesteps: ``u`` is drawn logit-normal (``sigmoid(N(0, 1))``, the SD3 paper's default and
diffusers' ``weighting_scheme="logit_normal"``), then shifted towards noise the way the model's
scheduler shifts its inference sigmas: Flux's resolution-dependent shift ``μ`` (from the packed
sequence length, ``use_dynamic_shifting``; sd-scripts' ``flux_shift``), SD3's fixed ``shift``
(3.0). Training and inference then visit the same noise levels.

Loss weighting: uniform (``compute_loss_weighting_for_sd3("none")``), the default of diffusers'
and kohya's Flux and SD3 trainers: logit-normal sampling already concentrates the steps on the
middle noise levels, which is what min-SNR-γ does for DDPM. ``train.snr_gamma`` is a DDPM
weighting and is not applied to these families.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from lora_factory.errors import StageError

from ..losses import sample_noise
from . import Noised, Prompt, load_with_diffusers

WEIGHTING = "none"


def shifted_sigmas(u: torch.Tensor, scheduler_config: Any, image_seq_len: int) -> torch.Tensor:
    """``u`` in (0, 1) shifted as the scheduler shifts its sigmas: exponential with
    ``μ = calculate_shift(image_seq_len)`` when it shifts dynamically, else ``s·u / (1 + (s-1)·u)``."""
    if scheduler_config.get("use_dynamic_shifting", False):
        exp_mu = _exp_mu(image_seq_len, scheduler_config.get("base_image_seq_len", 256),
                         scheduler_config.get("max_image_seq_len", 4096),
                         scheduler_config.get("base_shift", 0.5), scheduler_config.get("max_shift", 1.15))
        return exp_mu / (exp_mu + (1 / u - 1))
    shift = float(scheduler_config.get("shift", 1.0))
    return shift * u / (1 + (shift - 1) * u)


@lru_cache(maxsize=256)
def _exp_mu(image_seq_len: int, base_seq_len: int, max_seq_len: int, base_shift: float, max_shift: float) -> float:
    """``exp(μ)`` of a sequence length: the same few bucket sizes every step, so computed once each."""
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    return math.exp(calculate_shift(image_seq_len, base_seq_len, max_seq_len, base_shift, max_shift))


class FlowFamily(ABC):
    """What the flow-matching transformers share; each family names its own kohya modules."""

    name = "flow"
    denoiser = "transformer"
    text_encoder_loras: tuple[str, ...] = ("text_encoder",)
    modelspec_prediction = "flow"
    # The sidecar's "sd version" must be a member of the UI's SdVersion enum (A1111: Unknown, SD1,
    # SD2, SDXL; Forge adds Flux); another name is ignored. A family neither knows says "Unknown".
    a1111_sd_version = "Unknown"
    unloadable_encoders: tuple[str, ...] = ()
    patch = 2  # latent pixels per transformer token side

    def noise_scheduler(self, pipe: Any) -> Any:
        from diffusers import FlowMatchEulerDiscreteScheduler

        if not isinstance(pipe.scheduler, FlowMatchEulerDiscreteScheduler):
            raise StageError(f"the base model's scheduler is a {type(pipe.scheduler).__name__}; the {self.name} "
                             "family trains with flow matching (FlowMatchEulerDiscreteScheduler)")
        return FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config)

    def latent_grid(self, pipe: Any) -> int:
        """The VAE's downsampling times the transformer's patch (16 px for Flux and SD3)."""
        return 2 ** (len(pipe.vae.config.block_out_channels) - 1) * self.patch

    def add_noise(self, scheduler: Any, latents: torch.Tensor, generator: torch.Generator,
                  noise_offset: float) -> Noised:
        noise = sample_noise(latents, generator, noise_offset)
        u = torch.sigmoid(torch.randn((latents.shape[0],), generator=generator, device=latents.device))
        seq_len = (latents.shape[2] // self.patch) * (latents.shape[3] // self.patch)
        sigmas = shifted_sigmas(u, scheduler.config, seq_len)
        s = sigmas.view(-1, 1, 1, 1).to(latents.dtype)
        return Noised((1 - s) * latents + s * noise, sigmas, noise - latents)

    def loss(self, scheduler: Any, prediction: torch.Tensor, noised: Noised,
             snr_gamma: float | None) -> torch.Tensor:
        from diffusers.training_utils import compute_loss_weighting_for_sd3

        weights = compute_loss_weighting_for_sd3(WEIGHTING, noised.timesteps)
        per_sample = F.mse_loss(prediction.float(), noised.target.float(), reduction="none")
        return (per_sample.mean(dim=list(range(1, per_sample.ndim))) * weights).mean()

    @abstractmethod
    def kohya_name(self, module: str) -> tuple[str, int | None]:
        """A transformer module path → (kohya LoRA name, member index in a fused layer or None)."""

    def kohya_layers(self, pipe: Any) -> dict[str, torch.nn.Module]:
        from ..export_kohya import kohya_stand_ins, prefixed_layers

        return prefixed_layers(pipe, self.name) | kohya_stand_ins(pipe.transformer, self.kohya_name)

    def load_kohya(self, pipe: Any, path: Path) -> None:
        load_with_diffusers(pipe, path)

    def embeds_kwargs(self, prompt: Prompt, negative: Prompt) -> dict[str, Any]:
        """Flux and SD3 pipelines take the same names (Flux reads the negatives only for true CFG)."""
        return {"prompt_embeds": prompt["hidden"], "pooled_prompt_embeds": prompt["pooled"],
                "negative_prompt_embeds": negative["hidden"], "negative_pooled_prompt_embeds": negative["pooled"]}
