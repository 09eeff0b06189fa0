"""What the UNet is conditioned on: latents from the VAE and text embeddings from the text
encoder(s), computed the way the pipelines compute them at inference, read from the feature cache
when the encoders are frozen.

SD1.5 uses the text encoder's last hidden state; SDXL concatenates both encoders' penultimate
hidden states, takes the pooled projection from the second and adds the size/crop ``time_ids``
(original size, crop corner, target size = the sample's bucket).
"""

from __future__ import annotations

from typing import Any

import torch

from .dataset import Sample, load_pixels
from .feature_cache import FeatureCache, text_key


def _tokenize(tokenizer: Any, encoder: Any, captions: list[str], device: torch.device) -> torch.Tensor:
    # A tokenizer saved without model_max_length reports 1e30; the encoder's positions are the cap.
    max_length = min(int(tokenizer.model_max_length), encoder.config.max_position_embeddings)
    return tokenizer(captions, padding="max_length", max_length=max_length, truncation=True,
                     return_tensors="pt").input_ids.to(device)


def encode_text(pipe: Any, family: str, captions: list[str],
                device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(hidden states, pooled or None) for ``captions``, with gradients if the encoders train."""
    if family == "sd15":
        ids = _tokenize(pipe.tokenizer, pipe.text_encoder, captions, device)
        return pipe.text_encoder(ids, return_dict=False)[0], None
    hidden, pooled = [], None
    for tokenizer, encoder in ((pipe.tokenizer, pipe.text_encoder), (pipe.tokenizer_2, pipe.text_encoder_2)):
        out = encoder(_tokenize(tokenizer, encoder, captions, device), output_hidden_states=True)
        pooled = out[0]  # the last encoder's (CLIPTextModelWithProjection) text_embeds
        hidden.append(out.hidden_states[-2])
    return torch.cat(hidden, dim=-1), pooled


def sdxl_time_ids(samples: list[Sample]) -> torch.Tensor:
    """(B, 6): original (h, w), crop (top, left), target (h, w) — SDXL's micro-conditioning."""
    return torch.tensor([[*s.original_size, *s.crop_top_left, s.bucket.height, s.bucket.width]
                         for s in samples], dtype=torch.long)


class Conditioner:
    """Latents and text conditioning for batches of ``Sample``s.

    Each image and (frozen-encoder) caption is encoded on its own, then cached: a value never
    depends on which other items were encoded with it, so a run trains bit-for-bit the same
    whether its cache was off, cold, warm or half-filled by a killed run.
    """

    def __init__(self, pipe: Any, family: str, device: torch.device,
                 weight_dtype: torch.dtype, latent_cache: FeatureCache, text_cache: FeatureCache,
                 text_trainable: bool) -> None:
        self.pipe, self.family = pipe, family
        self.device, self.weight_dtype = device, weight_dtype
        self.latent_cache, self.text_cache = latent_cache, text_cache
        self.text_trainable = text_trainable
        self.vae_encodes = 0  # images that went through the VAE (the cache test counts them)

    # Latents ------------------------------------------------------------------------------------
    def _encode_moments(self, pixels: torch.Tensor) -> torch.Tensor:
        self.vae_encodes += pixels.shape[0]
        with torch.no_grad():
            dist = self.pipe.vae.encode(pixels.to(self.device, dtype=torch.float32)).latent_dist
        return dist.parameters.float()

    def moments(self, samples: list[Sample]) -> torch.Tensor:
        """The VAE's latent distribution parameters (mean ‖ logvar) for the batch, (B, 2C, h, w)."""
        out = []
        for s in samples:
            key = f"{s.record.sha256}-{s.bucket}-{'f' if s.flip else 'n'}"
            hit = self.latent_cache.get(key)
            if hit is None:
                hit = {"moments": self._encode_moments(load_pixels(s)[None])[0].cpu()}
                self.latent_cache.put(key, hit)
            out.append(hit["moments"])
        return torch.stack(out).to(self.device)

    def latents(self, samples: list[Sample], generator: torch.Generator | None) -> torch.Tensor:
        """Scaled latents: a draw from the VAE's distribution (``generator``), or its mode
        (``None``: validation). Same draws as ``vae.encode(x).latent_dist.sample(generator)``."""
        from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

        dist = DiagonalGaussianDistribution(self.moments(samples))
        latents = dist.sample(generator=generator) if generator is not None else dist.mode()
        return (latents * self.pipe.vae.config.scaling_factor).to(self.weight_dtype)

    # Text ---------------------------------------------------------------------------------------
    def _text(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.text_trainable:
            return encode_text(self.pipe, self.family, captions, self.device)
        hidden, pooled = [], []
        for caption in captions:
            hit = self.text_cache.get(text_key(caption))
            if hit is None:
                with torch.no_grad():
                    h, p = encode_text(self.pipe, self.family, [caption], self.device)
                hit = {"hidden": h[0].cpu()} | ({"pooled": p[0].cpu()} if p is not None else {})
                self.text_cache.put(text_key(caption), hit)
            hidden.append(hit["hidden"])
            pooled.append(hit.get("pooled"))
        stacked_pooled = torch.stack(pooled).to(self.device) if pooled[0] is not None else None
        return torch.stack(hidden).to(self.device), stacked_pooled

    def text(self, samples: list[Sample]) -> tuple[torch.Tensor, dict[str, torch.Tensor] | None]:
        """``encoder_hidden_states`` and, for SDXL, ``added_cond_kwargs``."""
        hidden, pooled = self._text([s.caption for s in samples])
        if self.family == "sd15":
            return hidden, None
        time_ids = sdxl_time_ids(samples).to(self.device, dtype=hidden.dtype)
        return hidden, {"text_embeds": pooled, "time_ids": time_ids}
