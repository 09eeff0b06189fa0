"""Model families: what the trainer, the exporters and the pipelines need to know about one kind
of base model, behind one interface.

The loop is the same for every family (latents from the VAE, noise, a prediction, a loss, the
optimizer step); what differs sits behind ``ModelFamily``: which pipeline attribute is the
denoiser and which of its modules get LoRAs, how captions become the model's prompt tensors, how
latents are noised and what the target is, how the denoiser is called, the loss, the kohya /
ComfyUI key names, and what the inference pipeline needs beyond the prompt. The UNet families
(``sd15``, ``sdxl``) share ``unet.UNetFamily`` (DDPM noise, epsilon / v-prediction targets);
the flow-matching transformers (``flux``, ``sd3``) share ``flow.FlowFamily``. Adding a family is
one module and one line in ``_families``.

Which family a base model is comes from its ``model_index.json``
(``lora_factory.models.families``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from lora_factory.errors import StageError

from ..dataset import Sample

Prompt = dict[str, torch.Tensor]  # batch-first tensors by name; one caption's slice is cacheable


@dataclass(frozen=True)
class Noised:
    """A batch ready for the denoiser: its input, the timesteps (UNet: integer steps; flow
    matching: sigmas in [0, 1]), and what it should predict."""

    inputs: torch.Tensor
    timesteps: torch.Tensor
    target: torch.Tensor


# The tags every LoRA card carries (diffusers' training scripts' set plus ours); a family adds its own two.
COMMON_CARD_TAGS = ("text-to-image", "diffusers-training", "diffusers", "lora", "template:sd-lora", "lora-factory")


@dataclass(frozen=True)
class HubCard:
    """What a family's LoRA card says on the Hugging Face hub: its model tags and the licence of
    the family's hub base (a LoRA inherits its base's terms). ``license="other"`` needs a
    ``license_name`` (and a ``license_link``), as the hub's card validator asks."""

    tags: tuple[str, ...]
    license: str
    license_name: str | None = None
    license_link: str | None = None

    def front_matter(self) -> dict[str, Any]:
        """The card's ``license*`` and ``tags`` keys."""
        front: dict[str, Any] = {"license": self.license}
        if self.license_name:
            front |= {"license_name": self.license_name, "license_link": self.license_link}
        return front | {"tags": [*COMMON_CARD_TAGS, *self.tags]}


class ModelFamily(Protocol):
    name: str
    denoiser: str  # the pipeline attribute that gets the LoRA: "unet" or "transformer"
    default_targets: tuple[str, ...]  # its LoRA target modules when train.target_modules is unset
    text_encoder_loras: tuple[str, ...]  # the text encoders train.train_text_encoder adapts
    # Encoders freed once every caption's embedding is cached, before the denoiser is loaded
    # (Flux: T5-XXL, 9.5 GB in bf16, and CLIP-L; the steps read the cache only).
    unloadable_encoders: tuple[str, ...]
    modelspec_architecture: str  # modelspec.architecture of its LoRA files
    modelspec_implementation: str
    modelspec_prediction: str  # modelspec.prediction_type: "epsilon", "v" or "flow"
    kohya_base_version: str  # ss_base_model_version
    a1111_sd_version: str  # the "sd version" of A1111's / Forge's LoRA sidecar: SD1, SDXL, Flux or Unknown
    hub_card: HubCard  # the model card's hub tags and the base model's licence

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

    def kohya_state(self, peft_state: dict[str, torch.Tensor], alpha: float) -> dict[str, torch.Tensor]:
        """Component-prefixed PEFT tensors (``unet.…lora_A.weight``) → the kohya / ComfyUI file's."""

    def kohya_layers(self, pipe: Any) -> dict[str, torch.nn.Module]:
        """The layers a kohya file of this family names, by kohya name (a fused layer as a
        meta-device stand-in of its summed shape): what the evaluator checks a file against."""

    def load_kohya(self, pipe: Any, path: Path) -> None:
        """Load the kohya file at ``path`` into the pipeline (the evaluator's portability check)."""

    def inference_kwargs(self, pipe: Any) -> dict[str, Any]:
        """What the pipeline call needs beyond prompt, steps, size and generator to match training."""

    def embeds_kwargs(self, prompt: Prompt, negative: Prompt) -> dict[str, Any]:
        """The pipeline call's arguments in place of ``prompt=`` when encoders were unloaded."""


def _families() -> dict[str, ModelFamily]:
    from .flux import Flux
    from .sd3 import SD3
    from .sd15 import SD15
    from .sdxl import SDXL

    return {f.name: f for f in (SD15(), SDXL(), Flux(), SD3())}


def family_for(name: str) -> ModelFamily:
    """The family called ``name``; a one-line error naming the known ones otherwise."""
    known = _families()
    if name not in known:
        raise StageError(f"unknown base model family {name!r}; expected one of {tuple(known)}")
    return known[name]


def family_of_job(base_ref: str, declared: str | None, cache_dir: Any) -> ModelFamily:
    """The family of the job's base model, read from its ``model_index.json`` (and checked
    against ``declared``); one ``StageError`` line when it is unknown or does not match."""
    from lora_factory.errors import ModelUnavailableError
    from lora_factory.models.families import detect_family

    try:
        name = detect_family(base_ref, cache_dir, declared)
    except ModelUnavailableError as e:
        raise StageError(str(e)) from None
    if name is None:
        raise StageError(f"the family of models.base = {base_ref!r} cannot be read (its model_index.json is not "
                         "in the Hugging Face cache and the hub is off): set models.base_family")
    return family_for(name)


def load_with_diffusers(pipe: Any, path: Path) -> None:
    """``load_lora_weights`` on the file itself: diffusers converts SD1.5 / SDXL / Flux kohya names."""
    pipe.load_lora_weights(str(path.parent), weight_name=path.name)


def denoiser_of(pipe: Any) -> torch.nn.Module:
    """The pipeline's denoiser (a UNet or a transformer)."""
    unet = getattr(pipe, "unet", None)
    return unet if unet is not None else pipe.transformer
