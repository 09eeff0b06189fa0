"""MLflow tracking with explicit run ids: one parent run per factory run, a nested run per stage.

Why ``MlflowClient`` and not ``mlflow.start_run``: the fluent API keeps the active run in
process-global state, which Prefect's task threads would share. Every call here names its run.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .errors import TrackingError

PARENT_TAG = "mlflow.parentRunId"
MAX_PARAM_LEN = 6000


def _flatten(prefix: str, value: Any, out: dict[str, str]) -> None:
    if isinstance(value, Mapping):
        for k, v in value.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    else:
        text = value if isinstance(value, str) else json.dumps(value, default=str)
        out[prefix] = text[:MAX_PARAM_LEN]


def flatten_params(params: Mapping[str, Any]) -> dict[str, str]:
    """Nested config -> ``{"train.rank": "4", ...}`` (MLflow params are flat strings)."""
    out: dict[str, str] = {}
    _flatten("", params, out)
    return out


def check_tracking_uri(uri: str, timeout_s: float = 5.0) -> None:
    """Fail fast, with one line, when the tracking store cannot be used."""
    if uri.startswith(("http://", "https://")):
        url = uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as resp:
                if resp.status != 200:
                    raise TrackingError(f"tracking server {uri} answered {resp.status} on /health")
        except (urllib.error.URLError, OSError, TimeoutError) as e:
            reason = getattr(e, "reason", e)
            raise TrackingError(
                f"tracking server {uri} does not answer ({reason}): start it "
                "(`lora-factory ui` serves the local store) or set --tracking-uri / tracking.uri "
                "to a sqlite:///path.db file"
            ) from None
    elif uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///"))
        parent = db.parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise TrackingError(f"cannot create {parent} for the MLflow database: {e.strerror}") from None
        if not os.access(parent, os.W_OK) or (db.exists() and not os.access(db, os.W_OK)):
            raise TrackingError(
                f"MLflow database {db} is not writable: set --tracking-uri to a writable "
                "sqlite:///path.db or fix its permissions"
            )


# Where MLflow's SQL schema records artefact locations (absolute URIs of the machine that wrote them).
_LOCATION_COLUMNS = (("experiments", "artifact_location"), ("runs", "artifact_uri"),
                     ("model_versions", "storage_location"), ("logged_models", "artifact_location"))


def sqlite_path(uri: str) -> Path | None:
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


def follow_moved_home(uri: str, artifact_root: Path) -> int:
    """Point the artefact locations of a home's own SQLite tracking store at this home.

    MLflow records absolute artefact URIs. When a home folder (``mlflow.db`` beside
    ``mlartifacts/``) is moved or copied to another path or machine, those URIs name the old
    place; this rewrites the old prefix to the home's ``mlartifacts`` so runs, their artefacts
    and registered versions open where they are now. A database outside its home (one shared
    by several homes) is left alone. Returns the number of rows changed.
    """
    import sqlite3

    db = sqlite_path(uri)
    root = Path(artifact_root).resolve()
    if db is None or not db.is_file() or db.resolve().parent != root.parent:
        return 0
    wanted = root.as_uri()
    changed = 0
    with contextlib.closing(sqlite3.connect(db)) as con, con:
        olds = {loc for (loc,) in con.execute("SELECT artifact_location FROM experiments")
                if loc and loc != wanted and loc.startswith("file://") and loc.endswith(f"/{root.name}")}
        tables = {name for (name,) in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        for old in olds:
            for table, column in _LOCATION_COLUMNS:
                if table in tables:
                    changed += con.execute(
                        f"UPDATE {table} SET {column} = ? || substr({column}, ?) "  # noqa: S608 - fixed names
                        f"WHERE substr({column}, 1, ?) = ?", (wanted, len(old) + 1, len(old), old)).rowcount
    return changed


class Tracker:
    """A thin, explicit-run-id wrapper over ``MlflowClient`` for the factory's runs."""

    def __init__(self, uri: str, experiment: str, artifact_root: Path | None = None) -> None:
        from mlflow.tracking import MlflowClient

        self.uri = uri
        if artifact_root is not None:
            follow_moved_home(uri, artifact_root)
        self.client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        self.experiment_id = self._experiment(experiment, artifact_root)

    def _experiment(self, name: str, artifact_root: Path | None) -> str:
        try:
            exp = self.client.get_experiment_by_name(name)
            if exp is not None:
                return exp.experiment_id
            location = Path(artifact_root).resolve().as_uri() if artifact_root else None
            return self.client.create_experiment(name, artifact_location=location)
        except Exception as e:
            raise TrackingError(f"MLflow at {self.uri} refused experiment '{name}': {e}") from None

    # runs -----------------------------------------------------------------------------------
    def start_parent(self, run_name: str, tags: Mapping[str, str] | None = None) -> str:
        run = self.client.create_run(self.experiment_id, run_name=run_name, tags=dict(tags or {}))
        return run.info.run_id

    def start_stage(self, parent_run_id: str, stage: str, tags: Mapping[str, str] | None = None) -> str:
        all_tags = {PARENT_TAG: parent_run_id, "lora_factory.stage": stage, **(tags or {})}
        run = self.client.create_run(self.experiment_id, run_name=stage, tags=all_tags)
        return run.info.run_id

    def reopen(self, run_id: str) -> None:
        self.client.update_run(run_id, status="RUNNING")

    def end(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status=status)

    def children(self, parent_run_id: str) -> list[Any]:
        return self.client.search_runs(
            [self.experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{parent_run_id}'"
        )

    # logging --------------------------------------------------------------------------------
    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        """Log params; on a reopened run (a resumed stage) values that changed since the failed
        attempt become ``resumed.<key>`` tags, since MLflow params cannot change."""
        from mlflow.entities import Param

        flat = flatten_params(params)
        existing = self.client.get_run(run_id).data.params
        items = [Param(k, v) for k, v in flat.items() if k not in existing]
        for start in range(0, len(items), 100):
            self.client.log_batch(run_id, params=items[start : start + 100])
        changed = {f"resumed.{k}": v for k, v in flat.items() if k in existing and existing[k] != v}
        if changed:
            self.set_tags(run_id, changed)

    def set_tags(self, run_id: str, tags: Mapping[str, Any]) -> None:
        for k, v in tags.items():
            self.client.set_tag(run_id, k, str(v))

    def log_metrics(self, run_id: str, metrics: Mapping[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric
        from mlflow.utils.time import get_current_time_millis

        ts = get_current_time_millis()
        items = [
            Metric(k, float(v), ts, step or 0)
            for k, v in metrics.items()
            if v is not None and math.isfinite(float(v))
        ]
        if items:
            self.client.log_batch(run_id, metrics=items)

    def log_artifact(self, run_id: str, path: Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(run_id, str(path), artifact_path)

    def log_artifacts(self, run_id: str, folder: Path, artifact_path: str | None = None) -> None:
        self.client.log_artifacts(run_id, str(folder), artifact_path)

    def log_dict(self, run_id: str, data: Mapping[str, Any], artifact_file: str) -> None:
        self.client.log_dict(run_id, dict(data), artifact_file)

    def artifact_uri(self, run_id: str, artifact_path: str = "") -> str:
        base = self.client.get_run(run_id).info.artifact_uri
        return f"{base}/{artifact_path}" if artifact_path else base

    # registry -------------------------------------------------------------------------------
    def register(
        self,
        name: str,
        run_id: str,
        artifact_path: str,
        tags: Mapping[str, str] | None = None,
        description: str | None = None,
    ) -> str:
        """Register ``runs:/<run_id>/<artifact_path>`` as a new version of ``name``."""
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_registered_model(name)
        except MlflowException:
            self.client.create_registered_model(
                name, description="LoRA adapters trained by LoRA Factory"
            )
        version = self.client.create_model_version(
            name,
            source=f"runs:/{run_id}/{artifact_path}",
            run_id=run_id,
            tags=dict(tags or {}),
            description=description,
        )
        return str(version.version)

    def set_alias(self, name: str, alias: str, version: str) -> None:
        self.client.set_registered_model_alias(name, alias, version)

    def alias_version(self, name: str, alias: str) -> str | None:
        from mlflow.exceptions import MlflowException

        try:
            return str(self.client.get_model_version_by_alias(name, alias).version)
        except MlflowException:
            return None
