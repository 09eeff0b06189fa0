"""Inputs of a stage that live outside the run directory (``StageSpec.external``), fingerprinted
for its cache key (``lora_factory.stage_keys``).

Why: deploy's decision depends on the registry as well as on its files: the gate compares the
LoRA with its concept's ``champion``. Keyed on its files only, a re-run after another run had
moved the champion was a cache hit that kept a stale decision. Each name here resolves to a small
JSON-safe fingerprint of the outside state the stage reads; when it differs from the one recorded
after the stage last ran, the stage runs again and the miss says what moved.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .names import registered_model_name
from .tracking import alias_version, sqlite_path

Fingerprint = dict[str, Any]
REGISTRY_CHAMPION = "registry.champion"


def registry_champion(config: Mapping[str, Any], topics: Sequence[str]) -> Fingerprint:
    """The run's registered model and the version its champion alias points at (None: no such
    model or alias). A SQLite tracking store that does not exist yet has no champion and is
    not created here."""
    deploy, uri = config["deploy"], config["tracking"]["uri"]
    model = registered_model_name(str(deploy.get("concept") or ""), topics)
    alias = str(deploy.get("champion_alias") or "champion")
    version = None
    db = sqlite_path(uri)
    if model is not None and (db is None or db.is_file()):
        from mlflow.tracking import MlflowClient

        version = alias_version(MlflowClient(tracking_uri=uri, registry_uri=uri), model, alias)
    return {"model": model, "alias": alias, "version": version}


def champion_moved(old: Fingerprint, new: Fingerprint) -> str:
    """``the champion moved: lighthouse@champion from version 3 to 4`` (``none``: no champion)."""
    where = f"{new['model']}@{new['alias']}"
    if (old.get("model"), old.get("alias")) != (new["model"], new["alias"]):
        where = f"{old.get('model')}@{old.get('alias')} -> {where}"
    return f"the champion moved: {where} from version {old.get('version') or 'none'} to {new['version'] or 'none'}"


@dataclass(frozen=True)
class External:
    """How to fingerprint one external input, and how to say that it changed."""

    resolve: Callable[[Mapping[str, Any], Sequence[str]], Fingerprint]
    changed: Callable[[Fingerprint, Fingerprint], str]


EXTERNAL: dict[str, External] = {REGISTRY_CHAMPION: External(registry_champion, champion_moved)}


def fingerprints(names: Sequence[str], config: Mapping[str, Any], topics: Sequence[str]) -> dict[str, Fingerprint]:
    """Each named external input's fingerprint now (``config``: the run's config as JSON)."""
    return {name: EXTERNAL[name].resolve(config, topics) for name in names}


def what_changed(name: str, old: Fingerprint | None, new: Fingerprint) -> str:
    """One line saying how external input ``name`` changed since it was recorded."""
    if old is None:
        return f"{name} was not recorded when the stage last ran"
    return EXTERNAL[name].changed(old, new)
