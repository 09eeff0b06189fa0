"""Which LoRA file serves a concept: the registered version its ``champion`` alias points to.

This is the one place that knows how the registry is laid out (registered model name per
concept, the base model tag, where the adapter file sits among the version's artefacts), so a
change of layout in ``deploy/registry.py`` is answered here alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from lora_factory.errors import FactoryError
from lora_factory.names import topic_key

CHAMPION_ALIAS = "champion"
BASE_TAG = "base_model"
LORA_FILE = "pytorch_lora_weights.safetensors"


class NoChampionError(FactoryError):
    """The concept has no registered model, or none of its versions holds the champion alias."""


@dataclass(frozen=True)
class Champion:
    concept: str
    registered_model: str
    version: str
    base_ref: str
    lora_file: Path


def registered_model_for(concept: str) -> str:
    """A concept's registered model name (``models:/<concept>@champion``): the concept itself,
    as the deploy stage names it."""
    return concept.strip()


@lru_cache(maxsize=8)
def _client(tracking_uri: str) -> Any:
    """One client per store: building one opens the database and checks its schema (seconds on
    SQLite), far too slow for the alias check of every request."""
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def champion_version(tracking_uri: str, concept: str) -> tuple[str, dict[str, str]]:
    """The champion's version number and tags: one cheap registry query, no download."""
    from mlflow.exceptions import MlflowException

    client = _client(tracking_uri)
    name = registered_model_for(concept)
    try:
        mv = client.get_model_version_by_alias(name, CHAMPION_ALIAS)
    except MlflowException as e:
        raise NoChampionError(f"concept {concept!r} has no {CHAMPION_ALIAS} (registered model {name!r}): "
                              "deploy a run of it first") from e
    return str(mv.version), dict(mv.tags)


def resolve_champion(tracking_uri: str, concept: str, cache_dir: Path) -> Champion:
    """The champion's LoRA file (downloaded once per version into ``cache_dir``) and base ref."""
    import mlflow.artifacts

    version, tags = champion_version(tracking_uri, concept)
    name = registered_model_for(concept)
    target = cache_dir / topic_key(name) / version
    found = sorted(target.rglob(LORA_FILE)) if target.is_dir() else []
    if not found:
        source = _client(tracking_uri).get_model_version_download_uri(name, version)
        target.mkdir(parents=True, exist_ok=True)
        mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(target),
                                            tracking_uri=tracking_uri)
        found = sorted(target.rglob(LORA_FILE))
    if not found:
        raise NoChampionError(f"version {version} of {name!r} has no {LORA_FILE} among its artefacts")
    base = tags.get(BASE_TAG)
    if not base:
        raise NoChampionError(f"version {version} of {name!r} has no {BASE_TAG!r} tag: "
                              "it was not registered by lora-factory deploy")
    return Champion(concept, name, version, base, found[0])
