"""The ``tiny:<name>`` models: which builder makes each one and where its cached copy lives.

Why a cache key: a tiny model is rebuilt only when what it is made of changes. The directory name
carries a short hash of the builder version, the sizes, the seed and the versions of the libraries
that write the files, so a stale copy is never picked up and concurrent runs share one build.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from lora_factory.models.build_cache import build_once
from lora_factory.models.tiny_captioner import CAPTIONER_CONFIG, build_captioner
from lora_factory.models.tiny_clip import CLIP_CONFIG, build_clip
from lora_factory.models.tiny_diffusion import SD15_CONFIG, SDXL_CONFIG, build_sd15, build_sdxl
from lora_factory.models.tiny_dino import DINO_CONFIG, build_dino
from lora_factory.models.tiny_flux import FLUX_CONFIG, build_flux
from lora_factory.models.tiny_safety import SAFETY_CONFIG, build_safety
from lora_factory.models.tiny_sd3 import SD3_CONFIG, build_sd3
from lora_factory.models.tiny_tagger import TAGGER_CONFIG, build_tagger

# Bump when a builder changes in a way its config does not show.
BUILDER_VERSION = 2  # 2: the SD/SDXL VAEs keep colour (tiny_vae.py)
TINY_SEED = 0
_LIBRARIES = ("torch", "diffusers", "transformers", "open_clip_torch", "safetensors")


@dataclass(frozen=True)
class TinyModel:
    """One tiny model: how to build it into a directory and the settings that define it."""

    name: str
    build: Callable[[Path, int], None]
    config: Mapping[str, Any]
    description: str
    pipeline: str | None = None  # the diffusers pipeline class a base model builds (family detection)


TINY_MODELS: dict[str, TinyModel] = {
    m.name: m
    for m in (
        TinyModel("sd", build_sd15, SD15_CONFIG, "Stable Diffusion 1.5 pipeline", "StableDiffusionPipeline"),
        TinyModel("sdxl", build_sdxl, SDXL_CONFIG, "Stable Diffusion XL pipeline", "StableDiffusionXLPipeline"),
        TinyModel("flux", build_flux, FLUX_CONFIG, "FLUX.1-dev pipeline (flow matching)", "FluxPipeline"),
        TinyModel("sd3", build_sd3, SD3_CONFIG, "Stable Diffusion 3.5 Medium pipeline (flow matching)",
                  "StableDiffusion3Pipeline"),
        TinyModel("clip", build_clip, CLIP_CONFIG, "open_clip ViT CLIP model"),
        TinyModel("dinov2", build_dino, DINO_CONFIG, "DINOv2 image encoder (transformers Dinov2Model)"),
        TinyModel("captioner", build_captioner, CAPTIONER_CONFIG, "BLIP image captioner"),
        TinyModel("tagger", build_tagger, TAGGER_CONFIG, "Qwen2 chat LM"),
        TinyModel("safety", build_safety, SAFETY_CONFIG, "Stable Diffusion safety checker (output filter)"),
    )
}
# ``tiny:<role>`` spellings of the config's role names.
ALIASES: dict[str, str] = {"clip_scorer": "clip", "sd15": "sd", "dino_scorer": "dinov2", "safety_checker": "safety"}


def canonical_name(name: str) -> str | None:
    """The registry name for ``name`` (or an alias of it), ``None`` if unknown."""
    name = ALIASES.get(name, name)
    return name if name in TINY_MODELS else None


def _library_versions() -> dict[str, str]:
    versions = {}
    for lib in _LIBRARIES:
        try:
            versions[lib] = version(lib)
        except PackageNotFoundError:
            versions[lib] = "absent"
    return versions


def cache_key(name: str, seed: int = TINY_SEED) -> str:
    """``<name>-<12 hex digits>``, the directory name of the build."""
    model = TINY_MODELS[name]
    spec = {
        "builder_version": BUILDER_VERSION,
        "name": name,
        "seed": seed,
        "config": model.config,
        "libraries": _library_versions(),
    }
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]
    return f"{name}-{digest}"


def build_tiny(name: str, out_dir: Path, seed: int = TINY_SEED) -> Path:
    """Build tiny model ``name`` into ``out_dir`` (which must not hold another model)."""
    TINY_MODELS[name].build(out_dir, seed)
    return out_dir


def tiny_model_dir(name: str, cache_dir: Path, seed: int = TINY_SEED) -> Path:
    """The cached build of ``name`` under ``cache_dir/tiny/``, built (atomically) on first use."""
    target = cache_dir / "tiny" / cache_key(name, seed)
    return build_once(target, lambda tmp: build_tiny(name, tmp, seed))
