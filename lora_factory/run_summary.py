"""A factory run at a glance: a markdown summary (counts per stage, scores, the gate's decision,
where the MLflow run and the reports are) and a table of stage timings with each stage's cache
decision. ``publish_summary`` writes them as ``<run>/summary.md`` and ``<run>/timings.json`` and
logs both to the run's MLflow parent run, whether the run went through the flow (which also
shows them as Prefect artifacts) or ended without one (``cli/cached.py``: every stage a hit)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from . import catalog
from .catalog_formats import Text
from .errors import FactoryError
from .runstore import DONE, RunDir
from .secrets import redact_text

if TYPE_CHECKING:
    from .context import RunRef

HEADLINES = 6  # summary numbers shown per stage
SUMMARY_FILE = "summary.md"
TIMINGS_FILE = "timings.json"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def stage_rows(state: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per stage in catalog order: status, cache decision of this (re-)run (hit or miss),
    seconds, start and end (of the stage's last run: a hit keeps its earlier timing)."""
    rows = []
    for name in catalog.STAGES:
        entry = state["stages"].get(name, {})
        rows.append({"stage": name, "status": entry.get("status", "pending"),
                     "cache": (entry.get("cache") or {}).get("decision"), "seconds": entry.get("seconds"),
                     "started_at": entry.get("started_at"), "finished_at": entry.get("finished_at")})
    return rows


def _decision(run: RunDir) -> str:
    if run.stage_status("deploy") != DONE:
        return "not decided (deploy has not run)"
    try:
        record = catalog.DEPLOY_DECISION.read(run.stage_path("deploy"))
    except FactoryError as e:
        return f"unreadable ({e})"
    aliases = ", ".join(record.get("aliases", [])) or "none"
    line = f"version {record.get('version')} of `{record.get('registered_model')}` (aliases: {aliases}): {record.get('reason', '')}"
    if "champion_after" in record:
        line += f" (champion before: {record.get('champion') or 'none'}, after: {record['champion_after'] or 'none'})"
    return line


def _mlflow_link(state: dict[str, Any], experiment_id: str | None) -> str:
    uri, run_id = state.get("mlflow_tracking_uri", ""), state.get("mlflow_parent_run_id", "")
    if uri.startswith(("http://", "https://")) and experiment_id is not None:
        return f"[{run_id}]({uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id})"
    return f"run `{run_id}` in `{redact_text(uri)}` (`lora-factory ui` shows it)"


def render_summary(run: RunDir, experiment_id: str | None = None) -> str:
    state = run.state()
    lines = [f"# LoRA Factory run {run.run_id}", "",
             f"Topics: {', '.join(state.get('topics', []))} · profile `{state.get('profile')}` · "
             f"status **{state.get('status', 'running')}**"]
    if state.get("error"):
        lines.append(f"\nError: {redact_text(str(state['error']))}")
    lines += ["", "| stage | status | cache | seconds | numbers |", "|---|---|---|---|---|"]
    for row in stage_rows(state):
        summary = state["stages"].get(row["stage"], {}).get("summary") or {}
        numbers = ", ".join(f"{k} {_fmt(v)}" for k, v in list(summary.items())[:HEADLINES])
        seconds = _fmt(row["seconds"]) if row["seconds"] is not None else ""
        lines.append(f"| {row['stage']} | {row['status']} | {row['cache'] or ''} | {seconds} | {numbers} |")
    lines += ["", f"Decision: {_decision(run)}", "", f"MLflow: {_mlflow_link(state, experiment_id)}", "", "Reports:"]
    for out in catalog.OUTPUTS.values():
        if isinstance(out.format, Text) and out.path.endswith(".html") and run.stage_status(out.stage) == DONE:
            lines.append(f"- {out.stage}: {run.url}/{out.run_path}")
    return "\n".join(lines) + "\n"


def publish_summary(ref: RunRef) -> tuple[str, list[dict[str, Any]]]:
    """Write the run's ``summary.md`` and ``timings.json`` into its directory and log both to
    its MLflow parent run; returns the markdown and the timing rows (for Prefect artifacts)."""
    run, tracker = ref.run_dir(), ref.tracker()
    markdown = render_summary(run, tracker.experiment_id)
    state = run.state()
    rows = stage_rows(state)
    timings = {"run_id": run.run_id, "status": state.get("status"), "stages": rows}
    run.write_file(SUMMARY_FILE, markdown.encode("utf-8"))
    run.write_file(TIMINGS_FILE, json.dumps(timings, indent=2).encode("utf-8"))
    tracker.log_text(ref.parent_run_id, markdown, SUMMARY_FILE)
    tracker.log_dict(ref.parent_run_id, timings, TIMINGS_FILE)
    return markdown, rows
