"""MLflow tracking with explicit run ids: one parent run per factory run, a nested run per stage.

Why ``MlflowClient`` and not ``mlflow.start_run``: the fluent API keeps the active run in
process-global state, which Prefect's task threads would share. Every call here names its run.
"""

from __future__ import annotations

import base64
import contextlib
import json
import math
import os
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit, urlunsplit

from .errors import TrackingError
from .names import mlflow_key
from .secrets import redact, redact_text, redact_url

PARENT_TAG = "mlflow.parentRunId"
# MLflow's limits (mlflow.utils.validation; the run name is a 250-character column).
MAX_PARAM_LEN = 6000
MAX_TAG_LEN = 8000
MAX_RUN_NAME = 250
MAX_PARAMS_PER_BATCH = 100
MAX_METRICS_PER_BATCH = 1000
# Schemes MLflow tracks into: its SQLAlchemy stores (``postgresql+psycopg2://`` ... too), its
# REST client, the file store and Databricks; plugins add theirs as entry points.
DB_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")
SERVICE_SCHEMES = ("", "file", "http", "https", "databricks", "databricks-uc", "uc")
T = TypeVar("T")


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


def tracking_scheme(uri: str) -> str:
    """The scheme MLflow picks its store by (``""`` for a folder path)."""
    if uri in ("databricks", "databricks-uc"):
        return uri
    try:
        return urlsplit(uri).scheme.lower()
    except ValueError:
        return "?"


def _supported(scheme: str) -> bool:
    if scheme in SERVICE_SCHEMES or scheme.split("+")[0] in DB_SCHEMES:
        return True
    return scheme in {ep.name for ep in entry_points(group="mlflow.tracking_store")}


def check_tracking_uri(uri: str, timeout_s: float = 5.0) -> None:
    """Fail fast, with one line, when the tracking store cannot be used."""
    scheme = tracking_scheme(uri)
    if scheme in ("http", "https"):
        _check_server(uri, timeout_s)
    elif uri.startswith("sqlite:///"):
        _check_sqlite(Path(uri.removeprefix("sqlite:///")))
    elif not _supported(scheme):
        raise TrackingError(
            f"tracking.uri {redact_url(uri)!r}: MLflow cannot track into a '{scheme}' URI: use "
            "sqlite:///path.db, postgresql://, mysql://, mssql://, http(s)://server, databricks "
            "or a folder path"
        )


def server_request(uri: str, path: str) -> urllib.request.Request:
    """A request for ``path`` on the tracking server carrying the credentials MLflow would send:
    the URI's ``user:password@`` as HTTP basic auth, else MLFLOW_TRACKING_USERNAME/PASSWORD,
    else MLFLOW_TRACKING_TOKEN. The URL itself carries no credentials."""
    parts = urlsplit(uri)
    user, password = unquote(parts.username or ""), unquote(parts.password or "")
    if not (user or password):
        user = os.environ.get("MLFLOW_TRACKING_USERNAME", "")
        password = os.environ.get("MLFLOW_TRACKING_PASSWORD", "")
    host = parts.netloc.rsplit("@", 1)[-1]
    request = urllib.request.Request(urlunsplit((parts.scheme, host, parts.path.rstrip("/") + path, "", "")))
    token = os.environ.get("MLFLOW_TRACKING_TOKEN")
    if user or password:
        basic = base64.b64encode(f"{user}:{password}".encode()).decode()
        request.add_header("Authorization", f"Basic {basic}")
    elif token:
        request.add_header("Authorization", f"Bearer {token}")
    return request


def _check_server(uri: str, timeout_s: float) -> None:
    shown = redact_url(uri)
    try:
        with urllib.request.urlopen(server_request(uri, "/health"), timeout=timeout_s) as resp:
            status = resp.status
    except urllib.error.HTTPError as e:
        status = e.code
    except (urllib.error.URLError, OSError, TimeoutError, ValueError) as e:
        reason = redact_text(str(getattr(e, "reason", e)))
        raise TrackingError(
            f"tracking server {shown} does not answer ({reason}): start it "
            "(`lora-factory ui` serves the local store) or set --tracking-uri / tracking.uri "
            "to a sqlite:///path.db file"
        ) from None
    if status in (401, 403):
        raise TrackingError(
            f"tracking server {shown} refused the credentials (HTTP {status}): check the user and "
            "password in tracking.uri, or MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD"
        )
    if status != 200:
        raise TrackingError(f"tracking server {shown} answered {status} on /health")


def _check_sqlite(db: Path) -> None:
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


def clean_value(value: str, limit: int) -> str:
    """A param or tag value any backing database stores: no credentials, valid UTF-8 (a lone
    surrogate, from undecodable bytes, becomes U+FFFD), no NUL (PostgreSQL refuses it), cut to
    ``limit`` characters."""
    text = redact_text(value)
    if not text.isascii() or "\x00" in text:
        text = text.encode("utf-8", "surrogatepass").decode("utf-8", "replace").replace("\x00", "\ufffd")
    return text[:limit]


def clean_tags(tags: Mapping[str, Any]) -> dict[str, str]:
    """Tags as MLflow takes them: valid keys, values as ``clean_value`` makes them."""
    return {mlflow_key(str(k)): clean_value(str(v), MAX_TAG_LEN) for k, v in tags.items()}


def _chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


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
        self.shown_uri = redact_url(uri)
        if self.shown_uri != uri:
            # MLflow prints "View run ... at: <tracking URI>" when a run ends: the password too.
            os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
        if artifact_root is not None:
            follow_moved_home(uri, artifact_root)
        self.client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        self.experiment_id = self._experiment(experiment, artifact_root)

    def _experiment(self, name: str, artifact_root: Path | None) -> str:
        from mlflow.exceptions import MlflowException

        try:
            exp = self.client.get_experiment_by_name(name)
            if exp is not None:
                return exp.experiment_id
            location = Path(artifact_root).resolve().as_uri() if artifact_root else None
            try:
                return self.client.create_experiment(name, artifact_location=location)
            except MlflowException:
                exp = self.client.get_experiment_by_name(name)  # another process made it meanwhile
                if exp is None:
                    raise
                return exp.experiment_id
        except Exception as e:
            raise TrackingError(
                f"MLflow at {self.shown_uri} refused experiment '{name}': {redact_text(str(e))}"
            ) from None

    # runs -----------------------------------------------------------------------------------
    def start_parent(self, run_name: str, tags: Mapping[str, str] | None = None) -> str:
        name = clean_value(run_name, MAX_RUN_NAME)
        run = self.client.create_run(self.experiment_id, run_name=name, tags=clean_tags(tags or {}))
        return run.info.run_id

    def start_stage(self, parent_run_id: str, stage: str, tags: Mapping[str, str] | None = None) -> str:
        all_tags = {PARENT_TAG: parent_run_id, "lora_factory.stage": stage, **(tags or {})}
        run = self.client.create_run(self.experiment_id, run_name=stage, tags=clean_tags(all_tags))
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
        attempt become ``resumed.<key>`` tags, since MLflow params cannot change. Keys made of
        user text (``crawl.seeds.<topic>``) go through ``mlflow_key``; values lose credentials."""
        from mlflow.entities import Param

        flat = {mlflow_key(k): clean_value(v, MAX_PARAM_LEN) for k, v in flatten_params(params).items()}
        existing = self.client.get_run(run_id).data.params
        items = [Param(k, v) for k, v in flat.items() if k not in existing]
        for chunk in _chunks(items, MAX_PARAMS_PER_BATCH):
            self.client.log_batch(run_id, params=chunk)
        changed = {f"resumed.{k}": v for k, v in flat.items() if k in existing and existing[k] != v}
        if changed:
            self.set_tags(run_id, changed)

    def set_tags(self, run_id: str, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(k, v) for k, v in clean_tags(tags).items()]
        for chunk in _chunks(items, MAX_PARAMS_PER_BATCH):
            self.client.log_batch(run_id, tags=chunk)

    def log_metrics(self, run_id: str, metrics: Mapping[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric
        from mlflow.utils.time import get_current_time_millis

        ts = get_current_time_millis()
        items = [
            Metric(mlflow_key(k), float(v), ts, step or 0)
            for k, v in metrics.items()
            if v is not None and math.isfinite(float(v))
        ]
        for chunk in _chunks(items, MAX_METRICS_PER_BATCH):
            self.client.log_batch(run_id, metrics=chunk)

    def log_artifact(self, run_id: str, path: Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(run_id, str(path), artifact_path)

    def log_artifacts(self, run_id: str, folder: Path, artifact_path: str | None = None) -> None:
        self.client.log_artifacts(run_id, str(folder), artifact_path)

    def log_dict(self, run_id: str, data: Mapping[str, Any], artifact_file: str) -> None:
        self.client.log_dict(run_id, redact(dict(data)), artifact_file)

    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        self.client.log_text(run_id, redact_text(text), artifact_file)

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
            tags=clean_tags(tags or {}),
            description=redact_text(description) if description else description,
        )
        return str(version.version)

    def set_alias(self, name: str, alias: str, version: str) -> None:
        self.client.set_registered_model_alias(name, alias, version)

    def alias_version(self, name: str, alias: str) -> str | None:
        return alias_version(self.client, name, alias)


def alias_version(client: Any, name: str, alias: str) -> str | None:
    """The version of registered model ``name`` behind ``alias`` (``MlflowClient``), or None."""
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None
