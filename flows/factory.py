"""The ``lora-factory`` flow: topics in, a registered LoRA out.

Each stage is a task that reads and writes the run directory. The order and the edges come
from the stage catalog's declarations (``lora_factory.catalog``): each task waits for the tasks
whose outputs it reads, so Prefect's run graph shows the real DAG, and the run attaches the DAG
as a markdown artifact. The flow only decides which stages have to run (a stage whose inputs,
settings and code are those of its finished result is a cache hit, ``lora_factory.stage_keys``,
so ``resume_run_id`` continues a crashed run and re-runs only what a changed setting reaches)
and records how the run ended.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from pydantic import Field

from deploy.refine import RefineStep, next_attempt
from lora_factory import catalog
from lora_factory.catalog import DEPLOY_DECISION, TUNE_TRAIN_CONFIG
from lora_factory.context import RunRef, check_cache, get_logger
from lora_factory.dag import render_markdown
from lora_factory.errors import FactoryError
from lora_factory.home import run_store_for
from lora_factory.lifecycle import (
    check_services,
    finish_run,
    pending_stages,
    preflight,
    resume_run,
    start_run,
)
from lora_factory.names import run_label
from lora_factory.profiles import load_config
from lora_factory.run_summary import publish_summary
from lora_factory.textfiles import read_topics_file


class _StageTasks(Mapping[str, Any]):
    """Stage name -> its Prefect task, imported on first use: a run whose stages are all cache
    hits never imports torch, diffusers or Scrapy (half of a cached re-run's time before)."""

    WHERE = {"crawl": "tasks.crawl:crawl_task", "curate": "tasks.curate:curate_task",
             "label": "tasks.label:label_task", "tune": "tasks.tune:tune_task", "train": "tasks.train:train_task",
             "evaluate": "tasks.evaluate:evaluate_task", "deploy": "tasks.deploy:deploy_task"}

    def __getitem__(self, stage: str) -> Any:
        module, name = self.WHERE[stage].split(":")
        return getattr(importlib.import_module(module), name)

    def __iter__(self) -> Iterator[str]:
        return iter(self.WHERE)

    def __len__(self) -> int:
        return len(self.WHERE)


STAGE_TASKS = _StageTasks()


def run_stages(ref: RunRef) -> dict[str, Any]:
    """Run, in catalog order, every stage that is not a cache hit (``check_cache``: done, with
    the same inputs, settings and code); each task waits for the upstream tasks of this flow run
    (skipped stages have no task here: their outputs are already there)."""
    states: dict[str, Any] = {}
    results: dict[str, Any] = {}
    for stage in catalog.STAGES:
        if check_cache(ref, stage).hit:
            continue
        upstream = [states[s] for s in catalog.spec(stage).upstream() if s in states]
        state = STAGE_TASKS[stage](ref, wait_for=upstream, return_state=True)
        results[stage] = state.result()  # re-raises the stage's error
        states[stage] = state
    return results


def _attach_dag(ref: RunRef) -> None:
    status = {s: v.get("status", "") for s, v in ref.run_dir().state()["stages"].items()}
    create_markdown_artifact(render_markdown(status), key="lora-factory-dag",
                             description=f"The stages of run {ref.run_id} and what each reads and writes")


def _attach_summary(ref: RunRef) -> None:
    """The run's summary (markdown) and stage timings (table) in its directory and MLflow parent
    run (``publish_summary``) and as Prefect artifacts. Best effort: a run that failed must end
    with its own error, not with this one's."""
    try:
        markdown, rows = publish_summary(ref)
        create_markdown_artifact(markdown, key="lora-factory-summary",
                                 description=f"Run {ref.run_id}: counts per stage, scores, decision, links")
        create_table_artifact(rows, key="lora-factory-timings",
                              description=f"Run {ref.run_id}: stage timings and cache decisions")
    except Exception as e:  # noqa: BLE001 - see the docstring
        get_logger().warning("run %s: could not attach the summary: %s", ref.run_id, e)


def refine_step(ref: RunRef) -> RefineStep | None:
    """The auto-refine loop's next attempt after this finished run (``deploy.refine``), if any."""
    if not ref.config.deploy.refine.attempts:
        return None
    run = ref.run_dir()
    record = DEPLOY_DECISION.read(run.stage_path("deploy"))
    trained = TUNE_TRAIN_CONFIG.read(run.stage_path("tune")).model_dump()
    return next_attempt(record, trained, ref.config, ref.run_id)


def build_overrides(
    max_pages: int | None, max_images: int | None, overrides: dict[str, Any] | None, concept: str | None = None
) -> dict[str, Any]:
    """The flow's typed parameters as config overrides (on top of the free-form ``overrides``)."""
    out = dict(overrides or {})
    if max_pages is not None:
        out["crawl.max_pages"] = max_pages
    if max_images is not None:
        out["crawl.max_images"] = max_images
    if concept is not None:
        out["deploy.concept"] = concept
    return out


def run_name(params: Mapping[str, Any]) -> str:
    """``tiny: rock & roll, 🚀 rocket``: the profile and the run's topics as a printable label.
    A resumed run is named after the topics it started with (its ``topics`` parameter is not
    used), read from its run.json; ``resume <id>`` when that cannot be read."""
    profile = str(params.get("profile") or "tiny")
    topics = [str(t) for t in params.get("topics") or []]
    resume = params.get("resume_run_id")
    if resume:
        try:
            cfg = load_config(profile, build_overrides(params.get("max_pages"), params.get("max_images"),
                                                       params.get("overrides"), params.get("concept")))
            topics = [str(t) for t in run_store_for(cfg).open(resume).state()["topics"]]
        except FactoryError:
            topics = []
    label = run_label(topics) or (f"resume {resume}" if resume else "no topics")
    return f"{run_label([profile], 60)}: {label}"


def _flow_run_name() -> str:
    from prefect.runtime import flow_run

    return run_name(flow_run.parameters)


Topic = Annotated[str, Field(min_length=1, max_length=10_000)]


@flow(name="lora-factory", flow_run_name=_flow_run_name, validate_parameters=True)
def lora_factory(
    topics: list[Topic] | None = None,
    profile: Annotated[str, Field(min_length=1)] = "tiny",
    concept: Annotated[str | None, Field(min_length=1, max_length=200)] = None,
    max_pages: Annotated[int | None, Field(ge=1)] = None,
    max_images: Annotated[int | None, Field(ge=1)] = None,
    topics_file: str | None = None,
    overrides: dict[str, Any] | None = None,
    resume_run_id: str | None = None,
) -> dict[str, Any]:
    """Run every stage whose result is not cached; returns where the results are.

    ``topics`` (or ``topics_file``: one per line, or YAML, on the worker's disk) for a new run;
    ``concept`` names the registered model the LoRA competes in (``deploy.concept``);
    ``max_pages``/``max_images`` bound the crawl; ``overrides`` are ``--set``-style settings.
    Prefect validates each before the run starts."""
    log = get_logger()
    extra = build_overrides(max_pages, max_images, overrides, concept)
    cfg = load_config(profile, extra)
    if resume_run_id:
        check_services(cfg)
        ref = resume_run(cfg, resume_run_id, extra)  # the run's own topics and config
    else:
        wanted = list(topics or []) + (read_topics_file(Path(topics_file)) if topics_file else [])
        ref = start_run(cfg, preflight(cfg, wanted))
    try:  # from here on, finish_run records the end and releases the run's lock
        log.info("run %s: stages not done yet: %s", ref.run_id, ", ".join(pending_stages(ref)) or "none")
        _attach_dag(ref)
        results = run_stages(ref)
    except FactoryError as e:
        finish_run(ref, ok=False, error=str(e))
        _attach_summary(ref)
        raise
    except BaseException as e:
        finish_run(ref, ok=False, error=f"{type(e).__name__}: {e}")
        _attach_summary(ref)
        raise
    finish_run(ref, ok=True)
    _attach_summary(ref)
    run = ref.run_dir()
    out = {
        "run_id": ref.run_id,
        "run_dir": run.url,
        "mlflow_parent_run_id": ref.parent_run_id,
        "tracking_uri": ref.config.tracking.uri,
        "deploy": results.get("deploy") or run.state()["stages"]["deploy"].get("summary"),
    }
    step = refine_step(ref)
    if step is not None:  # a rejected candidate: the next attempt, its own run (bounded by deploy.refine)
        log.info("run %s: auto-refine: %s", ref.run_id, "; ".join(step.why))
        try:
            out["refined"] = lora_factory(topics=ref.topics, profile=profile, overrides={**extra, **step.overrides})
        except FactoryError as e:  # this run finished; the attempt's own run records its failure
            log.warning("run %s: auto-refine attempt %d failed: %s", ref.run_id, step.attempt, e)
            out["refined"] = {"attempt": step.attempt, "error": str(e)}
    return out
