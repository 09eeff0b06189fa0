"""One function per model role: resolve the reference, then load with the library's own code.

Why here: stages ask for "the captioner of this profile" and get a ready object, whatever the
reference is (tiny, local directory, hub id). Heavy libraries are imported inside the functions so
``import lora_factory.models`` stays cheap for the CLI and for stages that need no model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from lora_factory.errors import ModelUnavailableError
from lora_factory.models.captioner import Captioner
from lora_factory.models.clip_scorer import ClipScorer
from lora_factory.models.refs import resolve_ref
from lora_factory.models.tagger import Tagger

if TYPE_CHECKING:
    import torch
    from diffusers import DiffusionPipeline
    from sentence_transformers import SentenceTransformer

Family = Literal["sd15", "sdxl"]
_PIPELINE_CLASSES: dict[str, str] = {
    "sd15": "StableDiffusionPipeline",
    "sdxl": "StableDiffusionXLPipeline",
}


def load_text_embedder(ref: str, cache_dir: Path, device: str = "cpu") -> SentenceTransformer:
    """A sentence-transformers model (all-MiniLM-L6-v2 by default) for semantic dedup."""
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(resolve_ref(ref, "text_embedder", cache_dir)), device=device)


def load_clip_scorer(ref: str, cache_dir: Path, device: str = "cpu") -> ClipScorer:
    """An open_clip model directory (hub layout) wrapped as a ``ClipScorer``."""
    return ClipScorer.from_dir(resolve_ref(ref, "clip_scorer", cache_dir), device=device)


def load_captioner(ref: str, cache_dir: Path, device: str = "cpu") -> Captioner:
    """A vision-to-text model wrapped as a ``Captioner``."""
    return Captioner.from_dir(resolve_ref(ref, "captioner", cache_dir), device=device)


def load_tagger(ref: str, cache_dir: Path, device: str = "cpu") -> Tagger:
    """A chat LM wrapped as a ``Tagger``."""
    return Tagger.from_dir(resolve_ref(ref, "tagger", cache_dir), device=device)


def _check_family(path: Path, ref: str, family: Family) -> None:
    """Fail with one line when the directory holds the other family's pipeline."""
    index = path / "model_index.json"
    if not index.is_file():
        raise ModelUnavailableError(
            f"models.base = {ref!r}: {path} has no model_index.json, "
            "so it is not a diffusers pipeline directory"
        )
    found: Any = json.loads(index.read_text(encoding="utf-8")).get("_class_name", "")
    expected = _PIPELINE_CLASSES[family]
    other = {v: k for k, v in _PIPELINE_CLASSES.items()}.get(found)
    if other is not None and other != family:
        raise ModelUnavailableError(
            f"models.base = {ref!r} is a {found} ({other}) but models.base_family is {family!r}: "
            f"set models.base_family to {other!r} or point models.base at a {expected}"
        )


def load_pipeline(
    ref: str,
    family: Family,
    cache_dir: Path,
    device: str = "cpu",
    dtype: torch.dtype | None = None,
) -> DiffusionPipeline:
    """The base text-to-image pipeline (SD1.5 or SDXL class by ``family``), float32 by default.

    SD1.5's NSFW safety checker is not loaded: it is not part of training or evaluation, and it
    blacks out images instead of failing.
    """
    import diffusers
    import torch

    if family not in _PIPELINE_CLASSES:
        raise ModelUnavailableError(
            f"models.base_family = {family!r} is not one of {sorted(_PIPELINE_CLASSES)}"
        )
    path = resolve_ref(ref, "base", cache_dir)
    _check_family(path, ref, family)
    pipeline_class = getattr(diffusers, _PIPELINE_CLASSES[family])
    extra: dict[str, Any] = (
        {"safety_checker": None, "requires_safety_checker": False} if family == "sd15" else {}
    )
    pipe = pipeline_class.from_pretrained(path, dtype=dtype or torch.float32, **extra)
    return pipe.to(device)
