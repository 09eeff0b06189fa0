"""What a stage needs to run, rebuilt from ids on each side of a task boundary.

Tasks receive a ``RunRef`` (config + run id + parent MLflow run id: small, serialisable) and
open a ``Stage`` with ``run_stage``: it marks the stage running in ``run.json``, opens the nested
MLflow run, hands out a staging folder, and on exit commits the outputs and records done/failed.
The stage logic itself stays a plain function of paths and config.
"""

from __future__ import annotations

import contextlib
import logging
import time
import traceback
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from . import catalog
from .catalog import Output, StageSpec
from .config import FactoryConfig
from .errors import FactoryError, StageError
from .home import home_of, run_store_for
from .manifest import refresh_run_manifest
from .runstore import DONE, FAILED, RUNNING, STAGES, RunDir
from .stage_keys import CacheDecision, decide, key_of, key_parts, output_digests, settled_parts
from .tracking import Tracker


def get_logger(name: str = "lora_factory") -> logging.Logger | logging.LoggerAdapter:
    """Prefect's run logger inside a flow or task (so lines reach the UI), else a std logger."""
    from prefect import get_run_logger
    from prefect.exceptions import MissingContextError

    with contextlib.suppress(MissingContextError):
        return get_run_logger()
    logger = logging.getLogger(name)
    if not logging.getLogger().handlers and not logger.handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    return logger


class RunRef(BaseModel):
    """The ids a task needs to find its run; nothing heavy."""

    run_id: str
    parent_run_id: str
    topics: list[str]
    config: FactoryConfig

    def run_dir(self) -> RunDir:
        return run_store_for(self.config).open(self.run_id)

    def tracker(self) -> Tracker:
        return make_tracker(self.config)


def make_tracker(cfg: FactoryConfig) -> Tracker:
    return Tracker(cfg.tracking.uri, cfg.tracking.experiment, home_of(cfg).mlartifacts)


@dataclass
class Stage:
    """A running stage: where to write, which MLflow run to log to."""

    name: str
    ref: RunRef
    run: RunDir
    tracker: Tracker
    mlflow_run_id: str
    out: Path
    scratch: Path  # survives a failed attempt; see RunDir.scratch_dir
    log: Any
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def config(self) -> FactoryConfig:
        return self.ref.config

    @property
    def spec(self) -> StageSpec:
        return catalog.spec(self.name)

    def input_dir(self, output: Output) -> Path:
        """The local folder of the stage that wrote ``output`` (a declared input), for paths
        stored relative to it (crawl items' ``image_path``)."""
        if output not in self.spec.reads:
            raise StageContractError(
                f"stage '{self.name}' reads {output.key} without declaring it: add it to its reads in lora_factory/catalog.py")
        return self.run.stage_path(output.stage)

    def input_path(self, output: Output) -> Path:
        """Where a declared input is, as a local file or folder."""
        return output.at(self.input_dir(output))

    def read(self, output: Output) -> Any:
        """A declared input, read with its catalog format (table, JSON, model, folder path...)."""
        return output.read(self.input_dir(output))

    def output_path(self, output: Output) -> Path:
        """Where to write a declared output inside the staging folder."""
        if output not in self.spec.writes:
            raise StageContractError(
                f"stage '{self.name}' writes {output.key} without declaring it: add it to its writes in lora_factory/catalog.py")
        path = output.at(self.out)
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def write(self, output: Output, data: Any) -> Path:
        self.output_path(output)
        return output.write(self.out, data)

    def log_params(self, params: Mapping[str, Any]) -> None:
        self.tracker.log_params(self.mlflow_run_id, params)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        self.tracker.log_metrics(self.mlflow_run_id, metrics, step)
        if step is None:
            self.summary.update({k: v for k, v in metrics.items()})

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        self.tracker.log_artifact(self.mlflow_run_id, path, artifact_path)

    def log_artifacts(self, folder: Path, artifact_path: str | None = None) -> None:
        self.tracker.log_artifacts(self.mlflow_run_id, folder, artifact_path)


class StageContractError(RuntimeError):
    """A stage used an output it did not declare in the catalog: a bug, not a user error."""


def missing_inputs(run: RunDir, spec: StageSpec) -> list[str]:
    """One line per declared input that is not there, naming the stage that makes it. An optional
    output (``required=False``) may be absent once its stage is done: the reader checks."""
    lines = []
    for out in spec.reads:
        status = run.stage_status(out.stage)
        if status != DONE:
            lines.append(f"{out.run_path} ({out.key}) is missing: stage '{out.stage}' makes it and is {status}")
            continue
        if out.required and not out.exists(run.stage_path(out.stage)):
            lines.append(f"{out.run_path} ({out.key}) is missing although stage '{out.stage}' is done: "
                         f"re-run '{out.stage}'")
    return lines


def unwritten_outputs(spec: StageSpec, out_dir: Path) -> list[str]:
    return [o.run_path for o in spec.writes if o.required and not o.exists(out_dir)]


@contextmanager
def run_stage(ref: RunRef, name: str) -> Iterator[Stage]:
    """Open stage ``name`` of the run; see the module docstring for what it guarantees."""
    run = ref.run_dir()
    spec = catalog.spec(name)
    missing = missing_inputs(run, spec)
    if missing:
        line = f"{name} cannot start: {missing[0]}" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
        run.set_stage(name, FAILED, error=line)
        raise StageError(line)
    tracker = ref.tracker()
    log = get_logger()
    state = run.state()
    parts = key_parts(state, name, ref.config.model_dump(mode="json"), run.stage_path)
    previous = state["stages"].get(name, {})
    if previous.get("status") in (FAILED, RUNNING) and previous.get("mlflow_run_id"):
        # A resumed stage logs into the run of its failed attempt, so step axes continue.
        mlflow_run_id = previous["mlflow_run_id"]
        tracker.reopen(mlflow_run_id)
    else:
        mlflow_run_id = tracker.start_stage(ref.parent_run_id, name, tags={"lora_factory.run_id": ref.run_id})
    run.set_stage(name, RUNNING, mlflow_run_id=mlflow_run_id)
    started = time.monotonic()
    log.info("%s: started (run %s)", name, ref.run_id)
    staged: list[Path] = []
    try:
        with run.stage_output(name) as out:
            staged.append(out)
            stage = Stage(name, ref, run, tracker, mlflow_run_id, out, run.scratch_dir(name), log)
            try:
                yield stage
                unwritten = unwritten_outputs(spec, out)
                if unwritten:
                    raise StageContractError(
                        f"stage '{name}' did not write {', '.join(unwritten)}, which it declares")
                digests = output_digests(spec, out)
            except BaseException:
                _keep_partial_outputs(tracker, mlflow_run_id, out)
                raise
    except BaseException as e:
        line = str(e) if isinstance(e, FactoryError) else f"{type(e).__name__}: {e}"
        run.set_stage(name, FAILED, error=line)
        tracker.set_tags(mlflow_run_id, {"lora_factory.error": line[:5000]})
        if not isinstance(e, FactoryError):
            tracker.log_text(mlflow_run_id, traceback.format_exc(), "error.txt")
        tracker.end(mlflow_run_id, "KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED")
        log.error("%s: failed: %s", name, line)
        raise
    seconds = round(time.monotonic() - started, 2)
    parts = settled_parts(parts, state, name, ref.config.model_dump(mode="json"))
    tracker.log_metrics(mlflow_run_id, {"stage_seconds": seconds})
    tracker.end(mlflow_run_id)
    run.set_stage(name, DONE, seconds=seconds, summary=_jsonable(stage.summary),
                  key=key_of(parts), key_parts=parts, outputs=digests)
    run.clear_scratch(name)
    refresh_run_manifest(run, STAGES)
    log.info("%s: done in %.1fs", name, seconds)


def check_cache(ref: RunRef, name: str) -> CacheDecision:
    """Whether stage ``name`` of the run can be skipped (``stage_keys``), recorded in run.json
    (``stages.<name>.cache``) and as the ``cache.<name>`` tag of the run's MLflow parent run."""
    run = ref.run_dir()
    decision = decide(run.state(), name, ref.config.model_dump(mode="json"), run.stage_path)
    record_decisions(ref, [decision])
    return decision


def record_decisions(ref: RunRef, decisions: list[CacheDecision]) -> None:
    """Record cache decisions where users look: ``stages.<s>.cache`` in run.json, the
    ``cache.<s>`` and ``cache.<s>.reason`` tags of the MLflow parent run, and a log line each."""
    run = ref.run_dir()
    state = run.state()
    tags: dict[str, str] = {}
    for d in decisions:
        d.record_in(state["stages"].setdefault(d.stage, {}))
        tags |= {f"cache.{d.stage}": "hit" if d.hit else "miss", f"cache.{d.stage}.reason": d.reason}
    run.write_state(state)
    ref.tracker().set_tags(ref.parent_run_id, tags)
    log = get_logger()
    for d in decisions:
        log.info("%s: cache %s (%s)", d.stage, "hit" if d.hit else "miss", d.reason)


def _keep_partial_outputs(tracker: Tracker, mlflow_run_id: str, out: Path) -> None:
    """A failed stage's small outputs (reports, stats) go to its MLflow run before the staging
    folder is discarded, so the user can see why it failed without a half-written run dir."""
    for path in sorted(out.glob("*")):
        if path.is_file() and path.suffix in (".html", ".json", ".md", ".yaml") and path.stat().st_size < 20e6:
            try:
                tracker.log_artifact(mlflow_run_id, path, "partial")
            except Exception as e:  # noqa: BLE001 - best effort: the stage's own error matters more
                get_logger().warning("could not keep %s in MLflow: %s", path.name, e)


def _jsonable(d: Mapping[str, Any]) -> dict[str, Any]:
    return {k: (v if isinstance(v, (int, float, str, bool)) or v is None else str(v)) for k, v in d.items()}
