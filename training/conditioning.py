"""What the denoiser is conditioned on: latents from the VAE and the prompt tensors from the
family's text encoder(s), computed the way the pipelines compute them at inference, read from the
feature cache when the encoders are frozen."""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

import torch

from lora_factory.config import TrainConfig

from .dataset import Sample, load_pixels
from .families import ModelFamily, Prompt
from .feature_cache import FeatureCache, module_fingerprint, text_key
from .lora import text_encoders


class Conditioner:
    """Latents and prompt tensors for batches of ``Sample``s.

    Each image and (frozen-encoder) caption is encoded on its own, then cached: a value never
    depends on which other items were encoded with it, so a run trains bit-for-bit the same
    whether its cache was off, cold, warm or half-filled by a killed run.
    """

    def __init__(self, pipe: Any, family: ModelFamily, device: torch.device,
                 weight_dtype: torch.dtype, latent_cache: FeatureCache, text_cache: FeatureCache,
                 text_trainable: bool, encoded_with: dict[str, dict[str, str]] | None = None) -> None:
        self.pipe, self.family = pipe, family
        self.device, self.weight_dtype = device, weight_dtype
        self.latent_cache, self.text_cache = latent_cache, text_cache
        self.text_trainable = text_trainable
        self.encoded_with = encoded_with or {}
        self.vae_encodes = 0  # images that went through the VAE (the cache test counts them)
        self.unloaded: tuple[str, ...] = ()  # text encoders freed after caching (unload_encoders)

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
        config = self.pipe.vae.config
        shift = getattr(config, "shift_factor", None) or 0.0  # Flux / SD3 VAEs centre their latents
        return ((latents - shift) * config.scaling_factor).to(self.weight_dtype)

    # Prompts ------------------------------------------------------------------------------------
    def prompt(self, samples: list[Sample]) -> Prompt:
        """The family's prompt tensors for the batch's captions (cached per caption when frozen)."""
        return self.texts([s.caption for s in samples])

    def texts(self, captions: list[str]) -> Prompt:
        """``prompt`` for caption strings."""
        if self.text_trainable:
            return self.family.encode_prompt(self.pipe, captions, self.device)
        hits = []
        for caption in captions:
            hit = self.text_cache.get(text_key(caption))
            if hit is None:
                with torch.no_grad():
                    encoded = self.family.encode_prompt(self.pipe, [caption], self.device)
                hit = {name: value[0].cpu() for name, value in encoded.items()}
                self.text_cache.put(text_key(caption), hit)
            hits.append(hit)
        return {name: torch.stack([h[name] for h in hits]).to(self.device) for name in hits[0]}

    def unload_encoders(self, captions: list[str]) -> tuple[str, ...]:
        """Cache every caption the run can see, then free the family's text encoders (Flux and
        SD3: T5-XXL and the CLIPs): the steps read the cache only. Only with the text cache on;
        the freed memory goes back to the allocator (``del`` + ``gc``), so a GPU run fits a
        smaller card, and the trainer loads the denoiser after this (``setup.attach_denoiser``)."""
        if self.text_cache.folder is None or not self.family.unloadable_encoders:
            return ()
        for caption in dict.fromkeys([*captions, ""]):  # "": caption dropout, the negative prompt
            self.texts([caption])
        for name in self.family.unloadable_encoders:
            setattr(self.pipe, name, None)
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        self.unloaded = self.family.unloadable_encoders
        return self.unloaded

    def pipeline_prompt(self, prompts: list[str]) -> dict[str, Any]:
        """The pipeline call's prompt arguments: the text, or (encoders unloaded) the cached
        embeddings of the prompts and of the empty negative prompt."""
        if not self.unloaded:
            return {"prompt": prompts}
        negative = self.texts([""] * len(prompts))
        return self.family.embeds_kwargs(self.texts(prompts), negative)

    def report(self) -> dict[str, Any]:
        return {"latents": self.latent_cache.stats(), "text": self.text_cache.stats(),
                "vae_encodes": self.vae_encodes, "unloaded_encoders": list(self.unloaded),
                "encoded_with": self.encoded_with}


def make_conditioner(pipe: Any, family: ModelFamily, cfg: TrainConfig, device: torch.device,
                     weight_dtype: torch.dtype, cache_dir: Path | None) -> Conditioner:
    """A ``Conditioner`` whose caches live under ``cache_dir`` in a folder per encoder
    fingerprint (so another base model never reads this one's latents)."""
    latent_root = cache_dir if cache_dir is not None and cfg.cache_latents else None
    text_root = text_cache_root(cfg, cache_dir)
    latent_ns = f"latents/{module_fingerprint(pipe.vae)}" if latent_root else ""
    encoders = {n: getattr(pipe, n) for n in text_encoders(pipe)}
    prints = {n: module_fingerprint(e) for n, e in encoders.items()}
    first, *others = encoders
    text_ns = f"text/{module_fingerprint(encoders[first], family.name, *(prints[n] for n in others))}" if text_root else ""
    # Which encoders the prompt tensors come from (read from the cache or encoded live).
    encoded_with = {n: {"class": type(e).__name__, "fingerprint": prints[n]} for n, e in encoders.items()}
    return Conditioner(pipe, family, device, weight_dtype, FeatureCache(latent_root, latent_ns),
                       FeatureCache(text_root, text_ns), text_trainable=cfg.train_text_encoder,
                       encoded_with=encoded_with)


def text_cache_root(cfg: TrainConfig, cache_dir: Path | None) -> Path | None:
    """Where caption embeddings are cached, or ``None`` when they are not: not when the text
    encoder trains, and not with shuffled tags, which make a new caption almost every step
    (caching those fills the disk with entries never read again; kohya refuses it too)."""
    on = cfg.cache_text_embeddings and not cfg.train_text_encoder and not cfg.shuffle_tags
    return cache_dir if cache_dir is not None and on else None
