"""A re-run with nothing to do ends without a flow (and so without a temporary Prefect server).

Why: a fully cached ``lora-factory run --resume RUN`` spent most of its time starting Prefect's
temporary API server and importing what the flow needs, only to skip every stage. The cache
decisions need only the run directory, the config and the code digests
(``lora_factory.stage_keys.all_hits``), so they are made here first. When every stage is a hit,
the run is resumed and finished as the flow would (decisions in run.json and on the MLflow parent
run, the run marked done, its lock released, ``summary.md`` and ``timings.json`` written and
logged to the parent run: ``lora_factory.run_summary``) and no flow runs. Anything else, and every run that
goes to a Prefect server the user runs (its UI shows each run), takes the flow as before.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from lora_factory.config import FactoryConfig
from lora_factory.context import RunRef, get_logger, record_decisions
from lora_factory.errors import FactoryError
from lora_factory.home import run_store_for
from lora_factory.lifecycle import finish_run, resume_config, resume_run, with_current_locations
from lora_factory.run_summary import publish_summary
from lora_factory.runlock import release
from lora_factory.stage_keys import CacheDecision, all_hits

NOTHING_RAN = "nothing changed: every stage is a cache hit, so no flow ran (and no Prefect server started)"


def temporary_prefect_server() -> bool:
    """Whether a flow run now would start Prefect's temporary server (no API configured in the
    environment, Prefect's profile or its settings files)."""
    if os.environ.get("PREFECT_API_URL"):
        return False
    from prefect.settings import get_current_settings  # Prefect's own resolution of its settings

    settings = get_current_settings()
    return not settings.api.url and settings.server.ephemeral.enabled


def _decisions(ref: RunRef) -> list[CacheDecision] | None:
    run = ref.run_dir()
    return all_hits(run.state(), ref.config.model_dump(mode="json"), run.stage_path)


def _nothing_to_do(cfg: FactoryConfig, run_id: str, overrides: Mapping[str, Any]) -> bool:
    """Every stage a hit with the config the resumed run would have, no auto-refine attempt that
    could follow (the flow starts those), and no Prefect server to show the run in."""
    run = run_store_for(cfg).open(run_id)
    state = run.state()
    saved = with_current_locations(resume_config(cfg, state, overrides), cfg, state["config"])
    if saved.deploy.refine.attempts:
        return False
    return all_hits(state, saved.model_dump(mode="json"), run.stage_path) is not None and temporary_prefect_server()


def rerun_without_flow(cfg: FactoryConfig, run_id: str, overrides: Mapping[str, Any]) -> dict[str, Any] | None:
    """Finish re-run ``run_id`` here when it has nothing to do; returns what the flow returns
    (plus ``nothing_ran``: the line that says so), or None: the flow runs it. ``overrides`` must hold no credentials
    (run.json records them): those reach ``cfg`` through the environment, as for the flow."""
    if not _nothing_to_do(cfg, run_id, overrides):
        return None
    ref = resume_run(cfg, run_id, overrides)  # locks the run, as the flow's resume does
    try:
        decisions = _decisions(ref)
        if decisions is None:  # the run changed between the look and the lock: the flow decides
            release(ref.run_dir())
            return None
        record_decisions(ref, decisions)
    except BaseException as e:  # recorded as the flow records it
        finish_run(ref, ok=False, error=str(e) if isinstance(e, FactoryError) else f"{type(e).__name__}: {e}")
        raise
    finish_run(ref, ok=True)
    try:  # as the flow does; best effort: the run is finished either way
        publish_summary(ref)
    except Exception as e:  # noqa: BLE001 - see above
        get_logger().warning("run %s: could not write the summary: %s", ref.run_id, e)
    run = ref.run_dir()
    return {
        "run_id": ref.run_id,
        "run_dir": run.url,
        "mlflow_parent_run_id": ref.parent_run_id,
        "tracking_uri": ref.config.tracking.uri,
        "deploy": run.state()["stages"]["deploy"].get("summary"),
        "nothing_ran": NOTHING_RAN,
    }
