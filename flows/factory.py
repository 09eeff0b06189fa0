"""The ``lora-factory`` flow: topics in, a registered LoRA out.

Each stage is a task that reads and writes the run directory; the flow only decides which
stages still have to run (so ``resume_run_id`` continues a crashed run from its first
unfinished stage) and records how the run ended.
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from lora_factory.context import get_logger
from lora_factory.errors import FactoryError
from lora_factory.lifecycle import (
    check_services,
    finish_run,
    pending_stages,
    preflight,
    resume_run,
    start_run,
)
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


@flow(name="lora-factory", flow_run_name="{profile}: {topics}")
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
    todo = pending_stages(ref)
    log.info("run %s: stages to run: %s", ref.run_id, ", ".join(todo) or "none")
    results: dict[str, Any] = {}
    try:
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
