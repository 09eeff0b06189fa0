"""Image (and text) embeddings the metrics run on, by registered name.

Why a registry: every metric is a pure function of embeddings, so a scorer is just a way to turn
images into L2-normalised rows. ``clip`` is the profile's CLIP scorer (it also embeds texts, for
CLIP-T); ``pixels`` needs no learned weights at all — a colour histogram next to the image
downscaled to a few pixels — so its numbers mean something even on the random tiny models.
``dino`` is a DINOv2 model (``models.dino_scorer``): the DreamBooth paper's subject-fidelity
embedding.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from lora_factory.errors import ConfigError
from lora_factory.models.refs import is_random_ref

PIXEL_SIDE = 8  # downscaled image: 8 x 8 x RGB
HIST_BINS = 4  # per channel: 4 x 4 x 4 colour bins


def l2_normalise(x: np.ndarray) -> np.ndarray:
    x = np.atleast_2d(np.asarray(x, dtype=np.float64))
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


@dataclass
class Embedder:
    """A named way to embed images; ``embed_texts`` only for scorers with a text tower."""

    name: str
    ref: str  # the model reference, or a description for weight-free embeddings
    random: bool  # a random-init model: its numbers carry no meaning
    embed_images: Callable[[Sequence[Image.Image]], np.ndarray]
    embed_texts: Callable[[Sequence[str]], np.ndarray] | None = None


Factory = Callable[[str, Path, str], Embedder]  # (its model ref, model cache, device) -> Embedder
EMBEDDERS: dict[str, Factory] = {}


def register(name: str) -> Callable[[Factory], Factory]:
    def wrap(factory: Factory) -> Factory:
        EMBEDDERS[name] = factory
        return factory
    return wrap


def load_embedder(name: str, clip_ref: str, cache_dir: Path, device: str = "cpu",
                  refs: Mapping[str, str] | None = None) -> Embedder:
    """Embedding ``name`` with its model: ``clip_ref`` for clip, ``refs[name]`` for the others
    that load one (``dino``: ``models.dino_scorer``)."""
    if name not in EMBEDDERS:
        raise ConfigError(f"evaluate.embeddings: unknown embedding {name!r} (known: {', '.join(sorted(EMBEDDERS))})")
    return EMBEDDERS[name]({"clip": clip_ref, **(refs or {})}.get(name, ""), cache_dir, device)


def pixel_embedding(image: Image.Image) -> np.ndarray:
    """Colour histogram (share of pixels per 4x4x4 RGB bin) and the 8x8 image centred on grey,
    each L2-normalised, side by side: near 1 for images of the same colours and layout."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.float64) / 255.0
    bins = np.minimum((rgb * HIST_BINS).astype(int), HIST_BINS - 1)
    flat = (bins[..., 0] * HIST_BINS + bins[..., 1]) * HIST_BINS + bins[..., 2]
    hist = np.bincount(flat.ravel(), minlength=HIST_BINS ** 3).astype(np.float64)
    small = np.asarray(image.convert("RGB").resize((PIXEL_SIDE, PIXEL_SIDE), Image.Resampling.BOX),
                       dtype=np.float64) / 255.0 - 0.5
    return np.concatenate([l2_normalise(hist)[0], l2_normalise(small.ravel())[0]])


@register("pixels")
def _pixels(clip_ref: str, cache_dir: Path, device: str) -> Embedder:
    def embed(images: Sequence[Image.Image]) -> np.ndarray:
        rows = [pixel_embedding(im) for im in images]
        return l2_normalise(np.stack(rows)) if rows else np.zeros((0, HIST_BINS ** 3 + 3 * PIXEL_SIDE ** 2))
    return Embedder("pixels", "colour histogram + 8x8 pixels (no weights)", False, embed)


@register("clip")
def _clip(clip_ref: str, cache_dir: Path, device: str) -> Embedder:
    from lora_factory.models import load_clip_scorer

    scorer = load_clip_scorer(clip_ref, cache_dir, device=device)
    return Embedder("clip", clip_ref, is_random_ref(clip_ref),
                    lambda ims: l2_normalise(scorer.embed_images(list(ims))),
                    lambda texts: l2_normalise(scorer.embed_texts(list(texts))))


@register("dino")
def _dino(dino_ref: str, cache_dir: Path, device: str) -> Embedder:
    from lora_factory.models import load_dino_scorer

    scorer = load_dino_scorer(dino_ref, cache_dir, device=device)
    return Embedder("dino", dino_ref, is_random_ref(dino_ref), lambda ims: l2_normalise(scorer.embed_images(list(ims))))
