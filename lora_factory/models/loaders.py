"""One function per model role: resolve the reference, then load with the library's own code.

Why here: stages ask for "the captioner of this profile" and get a ready object, whatever the
reference is (tiny, local directory, hub id). Heavy libraries are imported inside the functions so
``import lora_factory.models`` stays cheap for the CLI and for stages that need no model.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lora_factory.errors import ModelUnavailableError
from lora_factory.models.captioner import Captioner
from lora_factory.models.clip_scorer import ClipScorer
from lora_factory.models.dino_scorer import DinoScorer
from lora_factory.models.families import (
    FAMILY_PIPELINES,
    INDEX,
    check_declared,
    family_of_class,
    read_pipeline_class,
)
from lora_factory.models.refs import resolve_ref
from lora_factory.models.tagger import Tagger

if TYPE_CHECKING:
    import torch
    from diffusers import DiffusionPipeline
    from sentence_transformers import SentenceTransformer

def load_text_embedder(ref: str, cache_dir: Path, device: str = "cpu") -> SentenceTransformer:
    """A sentence-transformers model (all-MiniLM-L6-v2 by default) for semantic dedup."""
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(resolve_ref(ref, "text_embedder", cache_dir)), device=device)


def load_clip_scorer(ref: str, cache_dir: Path, device: str = "cpu") -> ClipScorer:
    """An open_clip model directory (hub layout) wrapped as a ``ClipScorer``."""
    return ClipScorer.from_dir(resolve_ref(ref, "clip_scorer", cache_dir), device=device)


def load_dino_scorer(ref: str, cache_dir: Path, device: str = "cpu") -> DinoScorer:
    """A transformers DINOv2 model directory wrapped as a ``DinoScorer``."""
    return DinoScorer.from_dir(resolve_ref(ref, "dino_scorer", cache_dir), device=device)


def load_captioner(ref: str, cache_dir: Path, device: str = "cpu") -> Captioner:
    """A vision-to-text model wrapped as a ``Captioner``."""
    return Captioner.from_dir(resolve_ref(ref, "captioner", cache_dir), device=device)


def load_tagger(ref: str, cache_dir: Path, device: str = "cpu") -> Tagger:
    """A chat LM wrapped as a ``Tagger``."""
    return Tagger.from_dir(resolve_ref(ref, "tagger", cache_dir), device=device)


def load_pipeline(
    ref: str,
    family: str | None,
    cache_dir: Path,
    device: str = "cpu",
    dtype: torch.dtype | None = None,
    **kwargs: Any,
) -> DiffusionPipeline:
    """The base text-to-image pipeline, of the class its ``model_index.json`` names, float32 by
    default. ``family`` (``models.base_family``), when given, must be the model's own.
    ``kwargs`` go to ``from_pretrained`` (e.g. a ``quantization_config``).

    SD1.5's NSFW safety checker is not loaded: it is not part of training or evaluation, and it
    blacks out images instead of failing.
    """
    import diffusers
    import torch

    if family is not None and family not in FAMILY_PIPELINES:
        raise ModelUnavailableError(
            f"models.base_family = {family!r} is not one of {sorted(FAMILY_PIPELINES)}"
        )
    path = resolve_ref(ref, "base", cache_dir)
    pipeline_class = read_pipeline_class(path, ref)
    found = check_declared(family_of_class(pipeline_class, ref), family, ref, pipeline_class)
    extra: dict[str, Any] = (
        {"safety_checker": None, "requires_safety_checker": False} if found == "sd15" else {}
    )
    pipe = getattr(diffusers, pipeline_class).from_pretrained(
        path, dtype=dtype or torch.float32, **extra, **kwargs
    )
    return pipe.to(device)


def load_pipeline_part(
    ref: str,
    family: str | None,
    cache_dir: Path,
    part: str,
    device: str = "cpu",
    dtype: torch.dtype | None = None,
    **kwargs: Any,
) -> torch.nn.Module:
    """One component of the base pipeline (``transformer``, ``text_encoder_2``...), loaded alone
    with the class its ``model_index.json`` names: the trainer loads Flux's transformer only
    after the text encoders are freed, so the two never share the memory. ``kwargs`` go to
    ``from_pretrained`` (a quantised component is placed by bitsandbytes, not moved)."""
    import torch

    path = resolve_ref(ref, "base", cache_dir)
    pipeline_class = read_pipeline_class(path, ref)
    check_declared(family_of_class(pipeline_class, ref), family, ref, pipeline_class)
    entry = json.loads((Path(path) / INDEX).read_text(encoding="utf-8")).get(part)
    if not (isinstance(entry, list) and len(entry) == 2 and all(isinstance(e, str) for e in entry)):
        raise ModelUnavailableError(f"models.base = {ref!r}: its {INDEX} has no component {part!r}; "
                                    "point models.base at a complete diffusers pipeline directory")
    library, class_name = entry
    component = getattr(importlib.import_module(library), class_name).from_pretrained(
        path, subfolder=part, dtype=dtype or torch.float32, **kwargs)
    return component if "quantization_config" in kwargs else component.to(device)
