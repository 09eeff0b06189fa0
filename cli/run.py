"""``run`` and ``demo``: start (or resume) a factory run and print where the results are."""

from __future__ import annotations

import logging
from typing import Annotated, Any

import typer

from lora_factory.errors import FactoryError
from lora_factory.profiles import load_config

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


def _hide_user_error_tracebacks() -> None:
    loggers = [logging.getLogger()] + [
        lg for lg in logging.Logger.manager.loggerDict.values() if isinstance(lg, logging.Logger)
    ]
    for lg in loggers:
        for handler in lg.handlers:
            if not any(isinstance(f, _UserErrorFilter) for f in handler.filters):
                handler.addFilter(_UserErrorFilter())


def _print_summary(result: dict[str, Any]) -> None:
    deploy = result.get("deploy") or {}
    uri = result["tracking_uri"]
    lines = [
        "",
        "LoRA Factory run finished.",
        f"  run id        {result['run_id']}",
        f"  run directory {result['run_dir']}",
        f"  LoRA weights  {result['run_dir']}/train/lora/pytorch_lora_weights.safetensors",
        f"  evaluation    {result['run_dir']}/evaluate/report.html",
        f"  curation      {result['run_dir']}/curate/report.html",
        f"  MLflow        {uri} (parent run {result['mlflow_parent_run_id']})",
    ]
    if deploy.get("model_uri"):
        aliases = ", ".join(deploy.get("aliases", []))
        lines.append(f"  registered    {deploy['model_uri']} (aliases: {aliases})")
    lines.append(f"  look at it    {self_command()} ui --tracking-uri '{uri}'")
    typer.echo("\n".join(lines))


def _use_local_server(cfg: Any) -> None:
    """Send the flow run to this home's `lora-factory server` when it runs (unless the user
    chose a Prefect API already), instead of a temporary server that vanishes with the run."""
    import os

    from .local_services import running_server

    state = None if os.environ.get("PREFECT_API_URL") else running_server(cfg)
    if state is not None:
        os.environ["PREFECT_API_URL"] = state.api_url


def _run(topics: list[str], profile: str, ov: dict[str, Any], resume: str | None) -> dict[str, Any]:
    from lora_factory.home import run_store_for
    from lora_factory.lifecycle import check_services, preflight

    cfg = load_config(profile, ov)
    if resume:
        check_services(cfg)
        run_store_for(cfg).open(resume)  # a typo'd run id fails here, in a second
    else:
        topics = preflight(cfg, topics)
    runtime_defaults()
    _use_local_server(cfg)
    from flows.factory import lora_factory  # heavy: prefect, torch, diffusers

    _hide_user_error_tracebacks()
    return lora_factory(topics=topics, profile=profile, overrides=ov, resume_run_id=resume)


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
    resume: Annotated[str | None, typer.Option(help="Continue this run id from its first unfinished stage.")] = None,
) -> None:
    """Run the whole factory for TOPICS."""
    try:
        all_topics = read_topics(topics, topics_file)
        ov = overrides(sets, store, home, tracking_uri, seeds, max_pages, max_images)
        result = _run(all_topics, profile, ov, resume)
    except FactoryError as e:
        fail(e)
    _print_summary(result)


def demo(home: HomeOpt = None, sets: SetOpt = None) -> None:
    """The whole factory on the built-in demo site, offline, with the tiny profile."""
    try:
        topics = read_topics(None, DEMO_TOPICS_FILE)
        result = _run(topics, "tiny", overrides(sets, home=home), None)
    except FactoryError as e:
        fail(e)
    _print_summary(result)
