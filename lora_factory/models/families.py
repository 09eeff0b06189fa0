"""Which model family a base model is, read from its ``model_index.json`` (``_class_name``).

Why here, in the kernel: the run's preflight must refuse a base model no family knows before the
crawl starts, and it must not import the trainer to do so. The trainer's families
(``training.families``) are keyed by the same names.

A ``tiny:`` reference is answered without building it (its builder names its pipeline class); a
local directory is read; a hub id is read from the Hugging Face cache, or, when the hub may be
used, by fetching that one small file. When a hub model's index cannot be read now, the family
is ``None`` and the train stage checks it when it loads the model.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from lora_factory.errors import ModelUnavailableError

log = logging.getLogger(__name__)

# diffusers pipeline class -> family name (training.families.<name>).
PIPELINE_FAMILIES: dict[str, str] = {
    "StableDiffusionPipeline": "sd15",
    "StableDiffusionXLPipeline": "sdxl",
    "FluxPipeline": "flux",
    "StableDiffusion3Pipeline": "sd3",
}
FAMILY_PIPELINES: dict[str, str] = {family: cls for cls, family in PIPELINE_FAMILIES.items()}
INDEX = "model_index.json"


def read_pipeline_class(path: Path, ref: str) -> str:
    """``_class_name`` of a diffusers pipeline directory; one line when it is not one."""
    index = Path(path) / INDEX
    if not index.is_file():
        raise ModelUnavailableError(
            f"models.base = {ref!r}: {path} has no {INDEX}, so it is not a diffusers pipeline directory"
        )
    try:
        found = json.loads(index.read_text(encoding="utf-8")).get("_class_name", "")
    except (ValueError, AttributeError):
        found = ""
    if not isinstance(found, str) or not found:
        raise ModelUnavailableError(f"models.base = {ref!r}: {index} names no pipeline class (_class_name)")
    return found


def family_of_class(pipeline_class: str, ref: str) -> str:
    """The family of a pipeline class; one line naming the ones the factory trains otherwise."""
    family = PIPELINE_FAMILIES.get(pipeline_class)
    if family is None:
        known = ", ".join(f"{c} ({f})" for c, f in PIPELINE_FAMILIES.items())
        raise ModelUnavailableError(
            f"models.base = {ref!r} is a {pipeline_class}, which no model family trains: "
            f"point models.base at one of {known}"
        )
    return family


def check_declared(found: str, declared: str | None, ref: str, pipeline_class: str) -> str:
    """``found``, after checking it against ``models.base_family`` when that is set."""
    if declared and declared != found:
        raise ModelUnavailableError(
            f"models.base = {ref!r} is a {pipeline_class} ({found}) but models.base_family is {declared!r}: "
            f"remove models.base_family (the family is read from the model) or set it to {found!r}"
        )
    return found


def _hub_index(repo_id: str) -> Path | None:
    """The hub model's ``model_index.json``: from the cache, or fetched alone when allowed."""
    from lora_factory.models.hub import (
        HUB_DEADLINE_S,
        HUB_TIMEOUT_S,
        _with_deadline,
        cached_snapshot,
        hub_offline,
    )

    snapshot = cached_snapshot(repo_id)
    if snapshot is not None and (snapshot / INDEX).is_file():
        return snapshot
    if hub_offline():
        return None
    from huggingface_hub import hf_hub_download

    try:
        file = _with_deadline(lambda: hf_hub_download(repo_id, INDEX, etag_timeout=HUB_TIMEOUT_S), HUB_DEADLINE_S)
    except Exception as exc:  # noqa: BLE001 - any failure: the train stage reports it on load
        log.info("could not read %s of %s now (%s); the train stage checks it", INDEX, repo_id, type(exc).__name__)
        return None
    return Path(file).parent


def base_pipeline_class(ref: str, cache_dir: Path) -> str | None:
    """The pipeline class ``ref`` names, without building or downloading the model; ``None``
    for a hub model whose index cannot be read now."""
    from lora_factory.models.refs import parse_ref, resolve_ref
    from lora_factory.models.tiny import TINY_MODELS, canonical_name

    try:
        parsed = parse_ref(ref)
    except ValueError:
        raise ModelUnavailableError("models.base is empty: set it to a hub id, a local directory or tiny:<name>") from None
    if parsed.kind == "tiny":
        name = canonical_name(parsed.target)
        pipeline = TINY_MODELS[name].pipeline if name else None
        if pipeline is None:
            resolve_ref(ref, "base", cache_dir)  # the one-line "not a tiny model" error
            raise ModelUnavailableError(f"models.base = {ref!r} is not a diffusion pipeline")
        return pipeline
    if parsed.kind == "local":
        return read_pipeline_class(resolve_ref(ref, "base", cache_dir), ref)
    folder = _hub_index(parsed.target)
    return read_pipeline_class(folder, ref) if folder is not None else None


def detect_family(ref: str, cache_dir: Path, declared: str | None = None) -> str | None:
    """The family of base model ``ref`` (checked against ``declared``); ``None`` when a hub
    model's index cannot be read now (then ``declared`` is returned)."""
    pipeline_class = base_pipeline_class(ref, cache_dir)
    if pipeline_class is None:
        return declared
    return check_declared(family_of_class(pipeline_class, ref), declared, ref, pipeline_class)


def config_family(base_ref: str, declared: str | None, models_dir: Path) -> str:
    """The family a run trains: ``models.base_family`` as preflight stored it, else read from
    the model; one line when it cannot be known."""
    family = declared or detect_family(base_ref, models_dir)
    if family is None:
        raise ModelUnavailableError(
            f"the family of models.base = {base_ref!r} cannot be read (its {INDEX} is not in the Hugging Face "
            "cache and the hub is off): set models.base_family"
        )
    return family
