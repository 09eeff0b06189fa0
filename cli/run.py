"""``run`` and ``demo``: start (or resume) a factory run and print where the results are."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Annotated, Any

import typer

from lora_factory.errors import FactoryError
from lora_factory.profiles import env_var, load_config
from lora_factory.secrets import RedactFilter, redact, redact_url

from .common import (
    DEMO_TOPICS_FILE,
    HomeOpt,
    ProfileOpt,
    SeedsOpt,
    SetOpt,
    StoreOpt,
    TopicsFileOpt,
    TopicsOpt,
    TrackingOpt,
    fail,
    overrides,
    read_topics,
    runtime_defaults,
    self_command,
)


class _UserErrorFilter(logging.Filter):
    """Drop tracebacks of ``FactoryError``s from log output: they are the user's to fix, and
    their message says how. Bugs keep their tracebacks."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, FactoryError):
            record.exc_info = None
            record.exc_text = None
        return True


def _filter_log_output() -> None:
    """On every handler (console, Prefect's API log): no tracebacks of user errors, and no
    credentials in any line."""
    loggers = [logging.getLogger()] + [
        lg for lg in logging.Logger.manager.loggerDict.values() if isinstance(lg, logging.Logger)
    ]
    for lg in loggers:
        for handler in lg.handlers:
            for kind in (_UserErrorFilter, RedactFilter):
                if not any(isinstance(f, kind) for f in handler.filters):
                    handler.addFilter(kind())


def _secrets_to_env(ov: dict[str, Any]) -> dict[str, Any]:
    """Overrides that carry credentials reach the flow as ``LORA_FACTORY_*`` variables of this
    process, not as flow parameters: Prefect keeps parameters in its database and shows them."""
    public: dict[str, Any] = {}
    for key, value in ov.items():
        if redact(value) != value:
            os.environ[env_var(key)] = json.dumps(value)
        else:
            public[key] = value
    return public


def _print_summary(result: dict[str, Any]) -> None:
    deploy = result.get("deploy") or {}
    uri = redact_url(result["tracking_uri"])
    lines = [
        "",
        "LoRA Factory run finished.",
        *([f"  {result['nothing_ran']}"] if result.get("nothing_ran") else []),
        f"  run id        {result['run_id']}",
        f"  run directory {result['run_dir']}",
        f"  LoRA weights  {result['run_dir']}/train/lora/pytorch_lora_weights.safetensors",
        f"  evaluation    {result['run_dir']}/deploy/report.html (with the gate's decision)",
        f"  curation      {result['run_dir']}/curate/report.html",
        f"  MLflow        {uri} (parent run {result['mlflow_parent_run_id']})",
    ]
    if deploy.get("model_uri"):
        aliases = ", ".join(deploy.get("aliases", []))
        lines.append(f"  registered    {deploy['model_uri']} (aliases: {aliases})")
    lines += refine_lines(result)
    lines.append(f"  look at it    {self_command()} ui --tracking-uri '{uri}'")
    typer.echo("\n".join(lines))


def refine_lines(result: dict[str, Any]) -> list[str]:
    """One line per auto-refine attempt (``deploy.refine``): each is a run of its own, nested in
    the flow's result, and the user should not have to find them in MLflow."""
    lines, attempt, refined = [], 1, result.get("refined")
    while refined:
        if "error" in refined:
            lines.append(f"  refine #{refined.get('attempt', attempt)}    failed: {refined['error']}")
            break
        verdict = (refined.get("deploy") or {}).get("verdict", "no decision")
        lines.append(f"  refine #{attempt}    run {refined['run_id']}: {verdict} ({refined['run_dir']})")
        attempt, refined = attempt + 1, refined.get("refined")
    return lines


def _use_local_server(cfg: Any) -> None:
    """Send the flow run to this home's `lora-factory server` when it runs (unless the user
    chose a Prefect API already), instead of a temporary server that vanishes with the run."""
    import os

    from .local_services import running_server

    state = None if os.environ.get("PREFECT_API_URL") else running_server(cfg)
    if state is not None:
        os.environ["PREFECT_API_URL"] = state.api_url


def _run(topics: list[str], profile: str, ov: dict[str, Any], resume: str | None) -> dict[str, Any]:
    from lora_factory.firstrun import ensure_prefect_api
    from lora_factory.home import home_of, run_store_for
    from lora_factory.lifecycle import check_services, preflight, resume_config
    from lora_factory.runlock import check_free

    cfg = load_config(profile, ov)
    if resume:
        check_services(cfg)
        # In a second, before the heavy imports: a typo'd run id, a damaged run.json, a run
        # another process works on, credentials not given again.
        run = run_store_for(cfg).open(resume)
        check_free(run)
        resume_config(cfg, run.state(), ov)
    else:
        topics = preflight(cfg, topics)
    runtime_defaults()
    _use_local_server(cfg)
    public = _secrets_to_env(ov)
    if resume:
        from .cached import rerun_without_flow

        _filter_log_output()
        done = rerun_without_flow(cfg, resume, public)
        if done is not None:
            return done
    from flows.factory import lora_factory  # heavy: prefect, torch, diffusers

    _filter_log_output()
    ensure_prefect_api(home_of(cfg))
    return lora_factory(topics=topics, profile=profile, overrides=public, resume_run_id=resume)


def run(
    topics: TopicsOpt = None,
    topics_file: TopicsFileOpt = None,
    profile: ProfileOpt = "tiny",
    max_pages: Annotated[int | None, typer.Option(help="Stop crawling after this many pages.")] = None,
    max_images: Annotated[int | None, typer.Option(help="Stop crawling after this many images.")] = None,
    seeds: SeedsOpt = None,
    sets: SetOpt = None,
    store: StoreOpt = None,
    home: HomeOpt = None,
    tracking_uri: TrackingOpt = None,
    resume: Annotated[str | None, typer.Option(
        help="Re-run this run id: stages whose inputs, settings and code are unchanged are skipped.")] = None,
    concept: Annotated[str | None, typer.Option(
        help="The concept the LoRA is registered and competes under (deploy.concept).")] = None,
    dataset: Annotated[Path | None, typer.Option(
        "--dataset", help="Start from your own folder or .zip (kohya, imagefolder, flat) instead of crawling.")] = None,
    license_: Annotated[str | None, typer.Option("--license", help="The --dataset images' licence (else licence.txt).")] = None,
) -> None:
    """Run the whole factory for TOPICS (or from your own --dataset)."""
    try:
        all_topics = read_topics(topics, topics_file)
        ov = overrides(sets, store, home, tracking_uri, seeds, max_pages, max_images)
        if concept is not None:
            ov["deploy.concept"] = concept
        if dataset is not None:
            ov |= dataset_overrides(dataset, license_)
            all_topics = all_topics or [dataset_topic(dataset)]
        result = _run(all_topics, profile, ov, resume)
    except FactoryError as e:
        fail(e)
    _print_summary(result)


def dataset_overrides(dataset: Path, licence: str | None) -> dict[str, Any]:
    ov: dict[str, Any] = {"crawl.source": "dataset", "crawl.dataset": str(dataset.resolve())}
    if licence:
        ov["crawl.dataset_license"] = licence
    return ov


def dataset_topic(dataset: Path) -> str:
    """The topic of a --dataset run without --topics: a kohya folder's concept name
    (``10_watercolour fox`` -> ``watercolour fox``), else the folder's name."""
    import re

    if dataset.is_dir():
        names = sorted(m.group(1) for p in dataset.iterdir() if p.is_dir() and (m := re.match(r"^\d+_(.+)$", p.name)))
        if names:
            return names[0].replace("_", " ")
    return dataset.stem.replace("_", " ")


def demo(home: HomeOpt = None, sets: SetOpt = None) -> None:
    """The whole factory on the built-in demo site, offline, with the tiny profile."""
    try:
        topics = read_topics(None, DEMO_TOPICS_FILE)
        result = _run(topics, "tiny", overrides(sets, home=home), None)
    except FactoryError as e:
        fail(e)
    _print_summary(result)
