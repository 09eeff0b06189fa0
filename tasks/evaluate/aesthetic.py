"""An optional aesthetic score: a LAION-style head (linear, or an MLP of linear layers) on the
L2-normalised CLIP image embeddings, reported as a reference, off by default.

Why linear layers only: the LAION aesthetic predictors are a single ``Linear(d, 1)`` (v1) or a
stack ``layers.0``, ``layers.2``, ... of ``Linear`` layers with dropout and no activations
between them (v2); chaining a file's 2-D ``*.weight`` tensors (with their biases) in layer
order reproduces both. ``tiny:`` gives a seeded random head (its numbers carry no meaning).
The score never enters the overall score; it reaches the gate only through
``evaluate.min_scores`` / ``max_scores`` (``aesthetic_delta``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from lora_factory.config import EvaluateConfig
from lora_factory.errors import ConfigError
from lora_factory.models.refs import is_random_ref
from lora_factory.schemas import MetricPair

from .score import EmbeddingSet, Scored

Images = tuple[Sequence[Image.Image], Sequence[Image.Image]]  # (base, LoRA)
Head = list[tuple[np.ndarray, np.ndarray]]  # (weight [out, in], bias [out]) per layer, in order
TINY_HIDDEN = 16
KEY = "evaluate.aesthetic_head"
CLIP_KEY = "evaluate.aesthetic_clip"


def tiny_head(dim: int, seed: int = 0) -> Head:
    """A seeded random ``dim -> 16 -> 1`` head."""
    rng = np.random.default_rng(seed)
    return [(rng.normal(0, dim ** -0.5, (TINY_HIDDEN, dim)), np.zeros(TINY_HIDDEN)),
            (rng.normal(0, TINY_HIDDEN ** -0.5, (1, TINY_HIDDEN)), np.zeros(1))]


def _state_dict(path: Path) -> dict[str, np.ndarray]:
    import torch

    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same user error
        raise ConfigError(f"{KEY} = {str(path)!r} is not a readable state dict ({type(e).__name__}): "
                          "point it at the head's .pth or .safetensors file") from None
    if not isinstance(state, dict):
        raise ConfigError(f"{KEY} = {str(path)!r} holds no state dict of linear layers")
    return {k: v.detach().float().numpy() for k, v in state.items() if hasattr(v, "detach")}


def _order(key: str) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", key))


def load_head(ref: str, dim: int, clip: str = "models.clip_scorer") -> Head:
    """The head named by ``ref`` (``tiny:...`` or a file path), checked against ``dim``, the size
    of the image embeddings of ``clip`` (the setting that names the CLIP, for the error)."""
    if is_random_ref(ref):
        return tiny_head(dim)
    path = Path(ref).expanduser()
    if not path.is_file():
        raise ConfigError(f"{KEY} = {ref!r}: no such file; set it to a LAION-style head's weights or leave it empty")
    state = _state_dict(path)
    weights = sorted((k for k, v in state.items() if k.endswith("weight") and v.ndim == 2), key=_order)
    head = [(state[k], state.get(k[: -len("weight")] + "bias", np.zeros(state[k].shape[0]))) for k in weights]
    if not head:
        raise ConfigError(f"{KEY} = {ref!r} has no linear layers (2-D *.weight tensors)")
    shapes = [w.shape for w, _ in head]
    if shapes[0][1] != dim or shapes[-1][0] != 1 or any(a[0] != b[1] for a, b in zip(shapes, shapes[1:], strict=False)):
        raise ConfigError(f"{KEY} = {ref!r} maps {shapes[0][1]} -> ... -> {shapes[-1][0]} but {clip} gives "
                          f"{dim}-dim image embeddings: set {CLIP_KEY} to the CLIP the head was trained on "
                          "(LAION's heads: OpenAI's ViT-L/14, 768-d)")
    return head


def aesthetic_scores(head: Head, emb: np.ndarray) -> np.ndarray:
    """One score per row of ``emb`` (L2-normalised CLIP image embeddings)."""
    x = np.asarray(emb, dtype=np.float64)
    for w, b in head:
        x = x @ w.T + b
    return x[:, 0]


def _clip_embeddings(sets: list[EmbeddingSet], cfg: EvaluateConfig, images: Images | None,
                     cache_dir: Path | None) -> tuple[np.ndarray, np.ndarray, dict[str, str], str]:
    """(base, LoRA) image embeddings of the head's CLIP: ``evaluate.aesthetic_clip``'s own model
    when set, else the ``clip`` embedding set; the scorers it used and the setting naming it."""
    clip_ref = cfg.aesthetic_clip.strip()
    if clip_ref:
        if images is None or cache_dir is None:
            raise ConfigError(f"{CLIP_KEY} needs the generated images to embed; leave it empty here")
        from .embedders import load_embedder

        clip = load_embedder("clip", clip_ref, cache_dir)
        return clip.embed_images(images[0]), clip.embed_images(images[1]), {"aesthetic_clip": clip_ref}, CLIP_KEY
    found = next((es for es in sets if es.name == "clip"), None)
    if found is None:
        raise ConfigError(f"{KEY} scores CLIP image embeddings: set {CLIP_KEY} (the head's CLIP), add clip to "
                          f"evaluate.embeddings, or unset {KEY}")
    return found.base, found.lora, {}, "models.clip_scorer"


def add_aesthetic(scored: Scored, sets: list[EmbeddingSet], cfg: EvaluateConfig, images: Images | None = None,
                  cache_dir: Path | None = None) -> dict[str, str]:
    """With ``evaluate.aesthetic_head`` set: the ``aesthetic`` metric (base vs LoRA, per image)
    in ``scored``; returns the scorers it used (``{"aesthetic": ref}``, and ``aesthetic_clip``
    when the head has its own CLIP), ``{}`` when off. ``images``: (base, LoRA) images."""
    ref = cfg.aesthetic_head.strip()
    if not ref:
        return {}
    base_emb, lora_emb, used, clip_key = _clip_embeddings(sets, cfg, images, cache_dir)
    head = load_head(ref, base_emb.shape[1], clip_key)
    base, lora = aesthetic_scores(head, base_emb), aesthetic_scores(head, lora_emb)
    scored.metrics["aesthetic"] = MetricPair(base=float(base.mean()), lora=float(lora.mean()))
    scored.per_sample["aesthetic"] = {"base": base.tolist(), "lora": lora.tolist()}
    return {"aesthetic": ref} | used


def aesthetic_delta(scored: Scored) -> dict[str, float | None]:
    """``{"aesthetic_delta": LoRA minus base}`` when the head ran (not in the overall score)."""
    pair = scored.metrics.get("aesthetic")
    return {} if pair is None else {"aesthetic_delta": pair.gain}
