"""Run directories: ids, the per-stage layout, and ``run.json`` with each stage's status.

A stage writes into a private staging folder and the folder replaces ``<run>/<stage>/`` only when
the stage succeeds. So a crash (or a bad input) leaves the last good outputs untouched and nothing
half-written for a re-run to trip on; ``run.json`` says which stages are done, which lets a
crashed run resume from the first stage that is not.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .catalog import STAGES
from .errors import StoreError
from .secrets import redact
from .storage import LocalStore, Store

__all__ = ["STAGES", "RunDir", "RunStore"]
PENDING, RUNNING, DONE, FAILED, SKIPPED = "pending", "running", "done", "failed", "skipped"


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def new_run_id() -> str:
    """Sortable by time, unique across machines: ``20261121-195501-3fa2c1``."""
    return f"{datetime.now(UTC):%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}"


@dataclass
class RunDir:
    """One run's directory in a store, plus a local work folder for stages to write into."""

    store: Store
    run_id: str
    work_root: Path  # local scratch for non-local stores (and staging)

    @property
    def key(self) -> str:
        return f"runs/{self.run_id}"

    @property
    def url(self) -> str:
        return self.store.url_of(self.key)

    def _local_stage_dir(self, stage: str) -> Path:
        local = self.store.local_path(f"{self.key}/{stage}")
        return local if local is not None else self.work_root / self.run_id / stage

    # run.json -----------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """run.json, checked: a damaged file is one ``StoreError`` line naming it."""
        key = f"{self.key}/run.json"
        raw = self.store.read_bytes(key)
        try:
            state = json.loads(raw)
            problem = _state_problem(state)
        except ValueError:  # UnicodeDecodeError too
            problem = "is not valid JSON (cut short by a crash?)"
        if problem:
            raise StoreError(
                f"{self.store.url_of(key)} {problem}: run {self.run_id} cannot be read; restore "
                "that file from a backup, or move the run's folder away and start a new run"
            )
        return state

    def write_state(self, state: dict[str, Any]) -> None:
        """Write run.json; URLs in it lose their credentials (``secrets.redact``)."""
        self.store.write_bytes(f"{self.key}/run.json", json.dumps(redact(state), indent=2).encode())

    def update(self, **fields: Any) -> dict[str, Any]:
        state = self.state()
        state.update(fields)
        self.write_state(state)
        return state

    def set_stage(self, stage: str, status: str, **info: Any) -> dict[str, Any]:
        """Record a stage's status (and e.g. its MLflow run id, error line, metrics)."""
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage}")
        state = self.state()
        entry = state["stages"].setdefault(stage, {})
        entry["status"] = status
        entry.setdefault("history", []).append({"status": status, "at": now_iso()})
        if status == RUNNING:
            entry["started_at"] = now_iso()
            entry.pop("error", None)
        elif status in (DONE, FAILED):
            entry["finished_at"] = now_iso()
        entry.update(info)
        self.write_state(state)
        return state

    def stage_status(self, stage: str) -> str:
        return self.state()["stages"].get(stage, {}).get("status", PENDING)

    def first_unfinished_stage(self) -> str | None:
        for stage in STAGES:
            if self.stage_status(stage) != DONE:
                return stage
        return None

    # stage folders ------------------------------------------------------------------------
    @contextmanager
    def stage_output(self, stage: str) -> Iterator[Path]:
        """A fresh folder to write ``stage``'s outputs into; it becomes ``<run>/<stage>`` on success.

        On an exception the folder is removed and the previous outputs stay as they were.
        """
        staging_parent = self.store.local_path(f"{self.key}/.staging")
        if staging_parent is None:
            staging_parent = self.work_root / self.run_id / ".staging"
        staging = staging_parent / f"{stage}-{uuid.uuid4().hex[:8]}"
        staging.mkdir(parents=True)
        try:
            yield staging
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        self._commit(stage, staging)

    def _commit(self, stage: str, staging: Path) -> None:
        if isinstance(self.store, LocalStore):
            self.store.replace_dir(staging, f"{self.key}/{stage}")
        else:
            self.store.upload_dir(staging, f"{self.key}/{stage}")
            cache = self._local_stage_dir(stage)
            shutil.rmtree(cache, ignore_errors=True)
            cache.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staging, cache)
            (cache / ".complete").write_text(now_iso())
        staging_parent = staging.parent
        if staging_parent.exists() and not any(staging_parent.iterdir()):
            staging_parent.rmdir()

    def stage_path(self, stage: str) -> Path:
        """A local folder holding ``stage``'s committed outputs (downloaded for remote stores)."""
        local = self._local_stage_dir(stage)
        if isinstance(self.store, LocalStore):
            if not local.is_dir():
                raise StoreError(f"{local} is missing: stage '{stage}' has not run for {self.run_id}")
            return local
        if not (local / ".complete").exists():
            if not self.store.list(f"{self.key}/{stage}"):
                raise StoreError(
                    f"{self.store.url_of(self.key)}/{stage} is missing: "
                    f"stage '{stage}' has not run for {self.run_id}"
                )
            shutil.rmtree(local, ignore_errors=True)
            self.store.download_dir(f"{self.key}/{stage}", local)
            (local / ".complete").write_text(now_iso())
        return local

    def clear_staging(self) -> None:
        """Remove staging folders that killed stages left behind. Only while holding the run's
        lock (``runlock``): a live stage of another process writes into its staging folder."""
        local = self.store.local_path(f"{self.key}/.staging")
        shutil.rmtree(local if local is not None else self.work_root / self.run_id / ".staging",
                      ignore_errors=True)

    def scratch_dir(self, stage: str) -> Path:
        """A local folder for ``stage`` that survives a failed attempt (crawl job state, training
        checkpoints), so a resumed stage continues instead of starting over. The stage decides
        what of it to copy into its outputs; ``clear_scratch`` removes it once the stage is done."""
        local = self.store.local_path(f"{self.key}/.scratch/{stage}")
        path = local if local is not None else self.work_root / self.run_id / ".scratch" / stage
        path.mkdir(parents=True, exist_ok=True)
        return path

    def clear_scratch(self, stage: str) -> None:
        local = self.store.local_path(f"{self.key}/.scratch/{stage}")
        path = local if local is not None else self.work_root / self.run_id / ".scratch" / stage
        shutil.rmtree(path, ignore_errors=True)
        parent = path.parent
        if parent.is_dir() and not any(parent.iterdir()):
            parent.rmdir()

    def write_file(self, rel: str, data: bytes) -> None:
        """A file at the run's top level (e.g. ``manifest.parquet``)."""
        self.store.write_bytes(f"{self.key}/{rel}", data)


class RunStore:
    """The runs in one store. ``work_root`` is the local scratch folder for remote stores."""

    def __init__(self, store: Store, work_root: Path) -> None:
        self.store = store
        self.work_root = Path(work_root) / _slug(store.url)

    def create(self, topics: list[str], profile: str, config: dict[str, Any], **extra: Any) -> RunDir:
        run = RunDir(self.store, new_run_id(), self.work_root)
        state = {
            "run_id": run.run_id,
            "created_at": now_iso(),
            "topics": topics,
            "profile": profile,
            "config": config,
            "stages": {s: {"status": PENDING} for s in STAGES},
            "status": RUNNING,
            **extra,
        }
        run.write_state(state)
        return run

    def open(self, run_id: str) -> RunDir:
        run = RunDir(self.store, run_id, self.work_root)
        if not self.store.exists(f"{run.key}/run.json"):
            raise StoreError(
                f"run '{run_id}' not found in {self.store.url}: `lora-factory runs` lists the runs"
            )
        return run

    def list(self) -> list[str]:
        ids = {k.split("/")[1] for k in self.store.list("runs") if k.endswith("/run.json")}
        return sorted(i for i in ids if not i.startswith("."))


def _state_problem(state: Any) -> str | None:
    """What is wrong with a parsed run.json (None: nothing)."""
    if not isinstance(state, dict):
        return "is not a JSON object"
    types = {"run_id": str, "topics": list, "config": dict, "stages": dict}
    missing = [k for k in types if k not in state]
    if missing:
        return f"lacks {', '.join(missing)}"
    wrong = [k for k, t in types.items() if not isinstance(state[k], t)]
    return f"has a malformed {', '.join(wrong)}" if wrong else None


def _slug(url: str) -> str:
    """A folder name for a store URL, so two stores never share scratch space."""
    return hashlib.sha256(url.encode()).hexdigest()[:12]
