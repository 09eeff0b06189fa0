"""The ``lora-factory`` flow: topics in, a registered LoRA out.

Each stage is a task that reads and writes the run directory; the flow only decides which
stages still have to run (so ``resume_run_id`` continues a crashed run from its first
unfinished stage) and records how the run ended.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prefect import flow

from lora_factory.context import get_logger
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
from tasks.crawl import crawl_task
from tasks.curate import curate_task
from tasks.deploy import deploy_task
from tasks.evaluate import evaluate_task
from tasks.label import label_task
from tasks.train import train_task
from tasks.tune import tune_task

STAGE_TASKS = {
    "crawl": crawl_task,
    "curate": curate_task,
    "label": label_task,
    "tune": tune_task,
    "train": train_task,
    "evaluate": evaluate_task,
    "deploy": deploy_task,
}


def build_overrides(
    max_pages: int | None, max_images: int | None, overrides: dict[str, Any] | None
) -> dict[str, Any]:
    out = dict(overrides or {})
    if max_pages is not None:
        out["crawl.max_pages"] = max_pages
    if max_images is not None:
        out["crawl.max_images"] = max_images
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
                                                       params.get("overrides")))
            topics = [str(t) for t in run_store_for(cfg).open(resume).state()["topics"]]
        except FactoryError:
            topics = []
    label = run_label(topics) or (f"resume {resume}" if resume else "no topics")
    return f"{run_label([profile], 60)}: {label}"


def _flow_run_name() -> str:
    from prefect.runtime import flow_run

    return run_name(flow_run.parameters)


@flow(name="lora-factory", flow_run_name=_flow_run_name)
def lora_factory(
    topics: list[str],
    profile: str = "tiny",
    max_pages: int | None = None,
    max_images: int | None = None,
    overrides: dict[str, Any] | None = None,
    resume_run_id: str | None = None,
) -> dict[str, Any]:
    """Run every stage that is not done yet; returns where the results are."""
    log = get_logger()
    extra = build_overrides(max_pages, max_images, overrides)
    cfg = load_config(profile, extra)
    if resume_run_id:
        check_services(cfg)
        ref = resume_run(cfg, resume_run_id, extra)  # the run's own topics and config
    else:
        ref = start_run(cfg, preflight(cfg, topics))
    results: dict[str, Any] = {}
    try:  # from here on, finish_run records the end and releases the run's lock
        todo = pending_stages(ref)
        log.info("run %s: stages to run: %s", ref.run_id, ", ".join(todo) or "none")
        for stage in todo:
            results[stage] = STAGE_TASKS[stage](ref)
    except FactoryError as e:
        finish_run(ref, ok=False, error=str(e))
        raise
    except BaseException as e:
        finish_run(ref, ok=False, error=f"{type(e).__name__}: {e}")
        raise
    finish_run(ref, ok=True)
    run = ref.run_dir()
    return {
        "run_id": ref.run_id,
        "run_dir": run.url,
        "mlflow_parent_run_id": ref.parent_run_id,
        "tracking_uri": ref.config.tracking.uri,
        "deploy": results.get("deploy") or run.state()["stages"]["deploy"].get("summary"),
    }
