"""What the UNet families (SD1.5, SDXL) share: DDPM noise on the VAE latents, an epsilon or
velocity target, the UNet call, and the MSE loss with optional min-SNR-γ weighting, as in
diffusers' ``train_text_to_image_lora.py``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from lora_factory.errors import StageError

from ..dataset import Sample
from ..losses import diffusion_loss, sample_noise, training_target
from . import HubCard, Noised, Prompt, load_with_diffusers


class UNetFamily:
    name = "unet"
    denoiser = "unet"
    default_targets: tuple[str, ...] = ("to_k", "to_q", "to_v", "to_out.0")
    text_encoder_loras: tuple[str, ...] = ("text_encoder", "text_encoder_2")
    unloadable_encoders: tuple[str, ...] = ()  # CLIP encoders are small: kept
    modelspec_architecture = "stable-diffusion-v1/lora"
    modelspec_implementation = "diffusers"
    modelspec_prediction = "epsilon"
    kohya_base_version = "sd_v1"
    a1111_sd_version = "SD1"
    hub_card = HubCard(("stable-diffusion", "stable-diffusion-diffusers"), "creativeml-openrail-m")

    def noise_scheduler(self, pipe: Any) -> Any:
        from diffusers import DDPMScheduler

        scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
        if scheduler.config.prediction_type not in ("epsilon", "v_prediction"):
            raise StageError(f"the base model's scheduler predicts {scheduler.config.prediction_type!r}; "
                             "training supports 'epsilon' and 'v_prediction'")
        return scheduler

    def latent_grid(self, pipe: Any) -> int:
        """The VAE's downsampling times the UNet's (64 for SD1.5, 32 for SDXL, 16 for the tiny
        test models)."""
        vae_factor = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
        return vae_factor * 2 ** (len(pipe.unet.config.down_block_types) - 1)

    def add_noise(self, scheduler: Any, latents: torch.Tensor, generator: torch.Generator,
                  noise_offset: float) -> Noised:
        noise = sample_noise(latents, generator, noise_offset)
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (latents.shape[0],),
                                  generator=generator, device=latents.device).long()
        return Noised(scheduler.add_noise(latents, noise, timesteps), timesteps,
                      training_target(scheduler, latents, noise, timesteps))

    def added_conditioning(self, prompt: Prompt, samples: list[Sample]) -> dict[str, torch.Tensor] | None:
        """The UNet's ``added_cond_kwargs`` (none for SD1.5)."""
        return None

    def predict(self, pipe: Any, noised: Noised, prompt: Prompt, samples: list[Sample]) -> torch.Tensor:
        return pipe.unet(noised.inputs, noised.timesteps, prompt["hidden"],
                         added_cond_kwargs=self.added_conditioning(prompt, samples), return_dict=False)[0]

    def loss(self, scheduler: Any, prediction: torch.Tensor, noised: Noised,
             snr_gamma: float | None) -> torch.Tensor:
        return diffusion_loss(prediction, noised.target, noised.timesteps, scheduler, snr_gamma)

    def kohya_state(self, peft_state: dict[str, torch.Tensor], alpha: float) -> dict[str, torch.Tensor]:
        from ..export_kohya import peft_to_kohya

        return peft_to_kohya(peft_state, alpha, self.name)

    def kohya_layers(self, pipe: Any) -> dict[str, torch.nn.Module]:
        from ..export_kohya import prefixed_layers

        return prefixed_layers(pipe, self.name)

    def load_kohya(self, pipe: Any, path: Path) -> None:
        load_with_diffusers(pipe, path)

    def inference_kwargs(self, pipe: Any) -> dict[str, Any]:
        return {}

    def embeds_kwargs(self, prompt: Prompt, negative: Prompt) -> dict[str, Any]:
        """StableDiffusionPipeline's names for precomputed embeddings (SDXL adds the pooled ones)."""
        return {"prompt_embeds": prompt["hidden"], "negative_prompt_embeds": negative["hidden"]}


def token_ids(tokenizer: Any, encoder: Any, captions: list[str], device: torch.device) -> torch.Tensor:
    # A tokenizer saved without model_max_length reports 1e30; the encoder's positions are the cap.
    max_length = min(int(tokenizer.model_max_length), encoder.config.max_position_embeddings)
    return tokenizer(captions, padding="max_length", max_length=max_length, truncation=True,
                     return_tensors="pt").input_ids.to(device)
