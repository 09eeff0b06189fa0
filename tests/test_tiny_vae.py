"""The tiny SD/SDXL VAEs keep colour: what a LoRA learns about colours can show in the images."""

from __future__ import annotations

import pytest
import torch

from lora_factory.models.seeding import seeded
from lora_factory.models.tiny_diffusion import SD15_CONFIG, SDXL_CONFIG
from lora_factory.models.tiny_vae import make_colour_preserving


def _vae(cfg: dict) -> torch.nn.Module:
    from diffusers import AutoencoderKL

    with seeded(1):
        return make_colour_preserving(AutoencoderKL(**cfg["vae"])).eval()


@pytest.mark.parametrize("cfg", [SD15_CONFIG, SDXL_CONFIG], ids=["sd15", "sdxl"])
def test_flat_colours_round_trip_and_latents_are_unit_scale(cfg: dict) -> None:
    vae = _vae(cfg)
    colours = torch.tensor([[0.8, -0.9, -0.9], [-0.9, -0.9, 0.8], [1.0, 1.0, 1.0], [-1.0, -1.0, -1.0], [0.1, 0.5, -0.3]])
    images = colours.view(-1, 3, 1, 1).expand(-1, 3, 64, 64).contiguous()
    with torch.no_grad():
        latents = vae.encode(images).latent_dist.sample(generator=torch.Generator().manual_seed(0))
        decoded = vae.decode(latents).sample
    scaled = latents * vae.config.scaling_factor
    assert torch.allclose(scaled[:, :3].mean((2, 3)), colours, atol=1e-3)  # what the denoiser sees
    assert decoded.shape == images.shape
    assert torch.allclose(decoded.mean((2, 3)), colours, atol=2e-3)


def test_a_two_colour_image_keeps_its_8x8_patch_colours() -> None:
    vae = _vae(SD15_CONFIG)
    image = torch.full((1, 3, 64, 64), -0.8)
    image[:, 0, :, :32] = 0.9  # left half red-ish, right half dark
    with torch.no_grad():
        decoded = vae.decode(vae.encode(image).latent_dist.mode()).sample
    patches = torch.nn.functional.avg_pool2d(image, 8)
    assert torch.allclose(torch.nn.functional.avg_pool2d(decoded, 8), patches, atol=0.03)


def test_the_build_is_deterministic() -> None:
    a, b = _vae(SD15_CONFIG).state_dict(), _vae(SD15_CONFIG).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
