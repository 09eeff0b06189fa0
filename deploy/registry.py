"""The MLflow model registry: one registered model per concept, versions logged with MLflow's own
``mlflow.diffusers`` flavor, and the ``candidate`` / ``champion`` / ``previous`` aliases.

Why the flavor: the registered version is then an MLflow model (``MLmodel``, adapter weights,
requirements) that ``mlflow.pyfunc.load_model('models:/<concept>@champion')`` and ``mlflow models
serve`` load; the base model is a reference in the flavor's config, never copied. Only the
diffusers weights file is logged (once); the kohya file and the card stay on the train run.

Everything here names its tracking store through a ``Tracker`` (explicit ``MlflowClient``), never
MLflow's process-global fluent state. Serving calls ``resolve`` to find a concept's champion.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lora_factory.config import DeployConfig
from lora_factory.errors import FactoryError
from lora_factory.names import registered_model_name
from lora_factory.tracking import Tracker, clean_value
from training.lora import LORA_WEIGHT_NAME

SCORE_TAG = "overall_score"
MODEL_PATH = "model"  # the MLflow model's folder in the deploy run's artefacts
ROLLBACK_TAG = "lora_factory.rollback"  # on the registered model: the last rollback's reason


class RegistryError(FactoryError):
    """A registry operation the user asked for cannot be done (no such concept, no previous)."""


@dataclass(frozen=True)
class ResolvedLora:
    """What serving needs to generate with a concept's version: the adapter folder on disk
    (``load_lora_weights(adapter_dir, weight_name=weight_name)``) and the base model it was
    trained on (``base_ref`` as configured, e.g. ``tiny:sd`` or a hub id; resolve it with
    ``lora_factory.models.resolve_ref``)."""

    concept: str
    version: str
    alias: str | None
    model_uri: str  # models:/<concept>/<version>
    adapter_dir: Path
    weight_name: str
    base_ref: str
    base_family: str
    trigger_word: str
    tags: Mapping[str, str]


def concept_name(concept: str, topics: Sequence[str]) -> str:
    """The registered model's name: ``deploy.concept`` or, when empty, a key of the topics."""
    name = registered_model_name(concept, topics)
    if name is None:
        raise RegistryError("no topics and no deploy.concept: set deploy.concept to name the registered model")
    return name


def flavor_base_model(base_ref: str, cache_dir: Path) -> str:
    """What the flavor stores as ``base_model``: the hub id for a hub reference (never the
    weights), else the local directory the reference resolves to (tiny models are built there)."""
    from lora_factory.models.refs import loadable_ref

    return loadable_ref(base_ref, cache_dir)


def log_lora_model(tracker: Tracker, run_id: str, lora_dir: Path, base_model: str,
                   metadata: Mapping[str, Any]) -> str:
    """Save the adapter with ``mlflow.diffusers.save_model`` and log it to ``run_id`` under
    ``model/``; returns the ``runs:/`` URI."""
    import mlflow.diffusers

    weights = Path(lora_dir) / LORA_WEIGHT_NAME
    if not weights.is_file():
        raise RegistryError(f"{lora_dir} has no {LORA_WEIGHT_NAME}: re-run the train stage")
    with tempfile.TemporaryDirectory(prefix="lf-model-") as tmp:
        path = Path(tmp) / MODEL_PATH
        mlflow.diffusers.save_model(adapter_path=str(weights), path=str(path), base_model=base_model,
                                    metadata=dict(metadata))
        tracker.log_artifacts(run_id, path, MODEL_PATH)
    return f"runs:/{run_id}/{MODEL_PATH}"


def champion_score(tracker: Tracker, concept: str, alias: str = "champion") -> float | None:
    """The overall score the version behind ``alias`` was registered with, if there is one."""
    version = tracker.alias_version(concept, alias)
    if version is None:
        return None
    value = tracker.client.get_model_version(concept, version).tags.get(SCORE_TAG)
    try:
        return float(value) if value not in (None, "", "None") else None
    except ValueError:
        return None


def register_candidate(tracker: Tracker, run_id: str, concept: str, cfg: DeployConfig,
                       tags: Mapping[str, str], description: str) -> str:
    """A new version of ``concept`` from the model logged on ``run_id``, aliased ``candidate``."""
    version = tracker.register(concept, run_id, MODEL_PATH, tags=dict(tags), description=description)
    tracker.set_alias(concept, cfg.candidate_alias, version)
    return version


def promote(tracker: Tracker, concept: str, version: str, cfg: DeployConfig) -> list[str]:
    """``champion`` to ``version``; the champion it replaces becomes ``previous``. Returns the
    aliases ``version`` now has."""
    old = tracker.alias_version(concept, cfg.champion_alias)
    if old is not None and old != version:
        tracker.set_alias(concept, cfg.previous_alias, old)
    tracker.set_alias(concept, cfg.champion_alias, version)
    return [cfg.candidate_alias, cfg.champion_alias]


def rollback(tracker: Tracker, concept: str, reason: str, cfg: DeployConfig) -> dict[str, Any]:
    """Move ``champion`` back to the ``previous`` version and record why (a version tag on the
    demoted one, and the registered model's tag). ``previous`` then points at the demoted
    version, so a second rollback undoes the first."""
    if not reason.strip():
        raise RegistryError("rollback needs a reason: pass --reason '...'")
    current = tracker.alias_version(concept, cfg.champion_alias)
    if current is None:
        raise RegistryError(f"concept '{concept}' has no {cfg.champion_alias}: nothing to roll back "
                            "(`lora-factory rollback` takes a registered model name)")
    back = tracker.alias_version(concept, cfg.previous_alias)
    if back is None or back == current:
        raise RegistryError(f"concept '{concept}' has no {cfg.previous_alias} version to roll back to")
    record = {"from_version": current, "to_version": back, "reason": clean_value(reason, 2000)}
    tracker.set_alias(concept, cfg.champion_alias, back)
    tracker.set_alias(concept, cfg.previous_alias, current)
    tracker.client.set_model_version_tag(concept, current, "rolled_back", record["reason"])
    tracker.client.set_registered_model_tag(concept, ROLLBACK_TAG, json.dumps(record))
    return {"concept": concept, **record}


def aliases(tracker: Tracker, concept: str) -> dict[str, str]:
    """alias -> version of a registered model."""
    return {a: str(v) for a, v in tracker.client.get_registered_model(concept).aliases.items()}


def resolve(tracker: Tracker, concept: str, alias: str = "champion", dst: Path | None = None) -> ResolvedLora:
    """Download the version behind ``alias`` (its MLflow model folder) and say where the adapter
    and which base model it needs. Raises ``RegistryError`` when the alias is not set."""
    from mlflow.artifacts import download_artifacts
    from mlflow.models import Model

    version = tracker.alias_version(concept, alias)
    if version is None:
        raise RegistryError(f"concept '{concept}' has no version with alias '{alias}'")
    mv = tracker.client.get_model_version(concept, version)
    uri = tracker.client.get_model_version_download_uri(concept, version)
    local = Path(download_artifacts(artifact_uri=uri, dst_path=str(dst) if dst else None,
                                    tracking_uri=tracker.uri))
    flavor = Model.load(str(local)).flavors["diffusers"]
    return ResolvedLora(concept=concept, version=version, alias=alias, model_uri=f"models:/{concept}/{version}",
                        adapter_dir=local / flavor["adapter_weights"],
                        weight_name=flavor.get("weight_name") or LORA_WEIGHT_NAME,
                        base_ref=mv.tags.get("base_model", flavor["base_model"]),
                        base_family=mv.tags.get("base_family", ""), trigger_word=mv.tags.get("trigger_word", ""),
                        tags=dict(mv.tags))
