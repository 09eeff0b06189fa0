"""``lora-factory``: run the factory, look at runs, open the MLflow UI.

User errors print one line (``error: ...``) and exit 2; checks that need no heavy imports run
before Prefect, torch or diffusers are loaded, so a typo costs a second, not half a minute.
The flow is imported lazily: the kernel itself depends only on third-party packages.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from .errors import ConfigError, FactoryError
from .profiles import available_profiles, load_config, parse_set_args
from .seeds import load_seed_file

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Turn a list of topics into a trained, evaluated and registered LoRA adapter.",
)

DEMO_TOPICS_FILE = Path(__file__).resolve().parent.parent / "configs" / "topics" / "demo.yaml"


def _runtime_defaults() -> None:
    """Defaults that keep an offline run offline, robust on a busy machine, and readable."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # Prefect's temporary API server gets 20 s to start by default; a loaded 2-core machine
    # needs about that much, and missing it fails the run before it begins.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import logging

    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)


class _UserErrorFilter:
    """Drop tracebacks of ``FactoryError``s from log output: they are the user's to fix, and
    their message says how. Bugs keep their tracebacks."""

    def filter(self, record: Any) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, FactoryError):
            record.exc_info = None
            record.exc_text = None
        return True


def _hide_user_error_tracebacks() -> None:
    import logging

    loggers = [logging.getLogger()] + [
        lg for lg in logging.Logger.manager.loggerDict.values() if isinstance(lg, logging.Logger)
    ]
    for lg in loggers:
        for handler in lg.handlers:
            if not any(isinstance(f, _UserErrorFilter) for f in handler.filters):
                handler.addFilter(_UserErrorFilter())


def _fail(e: FactoryError) -> None:
    typer.echo(f"error: {e}", err=True)
    raise typer.Exit(e.exit_code)


def read_topics(topics: list[str] | None, topics_file: Path | None) -> list[str]:
    """Topics from repeated/comma-separated --topics and/or a YAML/text file."""
    out: list[str] = []
    for t in topics or []:
        out += t.split(",")
    if topics_file is not None:
        if not topics_file.is_file():
            raise ConfigError(f"topics file {topics_file} does not exist")
        text = topics_file.read_text()
        data: Any = yaml.safe_load(text) if topics_file.suffix in (".yaml", ".yml") else text.splitlines()
        if isinstance(data, dict):
            data = data.get("topics")
        if not isinstance(data, list):
            raise ConfigError(f"{topics_file} must be a list of topics or a mapping with 'topics:'")
        out += [str(t) for t in data]
    return out


def _overrides(
    sets: list[str] | None = None,
    store: str | None = None,
    home: str | None = None,
    tracking_uri: str | None = None,
    seeds: Path | None = None,
    max_pages: int | None = None,
    max_images: int | None = None,
) -> dict[str, Any]:
    ov = parse_set_args(sets or [])
    for key, value in (("store.root", store), ("home", home), ("tracking.uri", tracking_uri),
                       ("crawl.max_pages", max_pages), ("crawl.max_images", max_images)):
        if value is not None:
            ov[key] = value
    if seeds is not None:
        ov["crawl.seeds"] = load_seed_file(seeds)
        ov.setdefault("crawl.source", "seeds")
    return ov


def _self_command() -> str:
    """How the user can call us again: the bare name if it is on PATH, else the full path."""
    import shutil

    if shutil.which("lora-factory"):
        return "lora-factory"
    exe = Path(sys.argv[0])
    return str(exe.resolve()) if exe.name == "lora-factory" else "lora-factory"


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
    lines.append(f"  look at it    {_self_command()} ui --tracking-uri '{uri}'")
    typer.echo("\n".join(lines))


def _run(topics: list[str], profile: str, overrides: dict[str, Any], resume: str | None) -> dict[str, Any]:
    from .lifecycle import check_services, preflight, run_store_for

    cfg = load_config(profile, overrides)
    if resume:
        check_services(cfg)
        run_store_for(cfg).open(resume)  # a typo'd run id fails here, in a second
    else:
        topics = preflight(cfg, topics)
    _runtime_defaults()
    from flows.factory import lora_factory  # heavy: prefect, torch, diffusers

    _hide_user_error_tracebacks()

    return lora_factory(topics=topics, profile=profile, overrides=overrides, resume_run_id=resume)


TopicsOpt = Annotated[list[str] | None, typer.Option("--topics", "-t", help="Topics, comma-separated or repeated.")]
TopicsFileOpt = Annotated[Path | None, typer.Option("--topics-file", help="YAML list (or topics: key) or a text file.")]
ProfileOpt = Annotated[str, typer.Option("--profile", "-p", help="tiny, sd15, sdxl or a YAML path.")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", help="Override a setting: section.key=value.")]
StoreOpt = Annotated[str | None, typer.Option("--store", help="Run store: a folder or s3://bucket/prefix.")]
HomeOpt = Annotated[str | None, typer.Option("--home", help="Local data folder (models, MLflow DB).")]
TrackingOpt = Annotated[str | None, typer.Option("--tracking-uri", help="MLflow tracking URI.")]
SeedsOpt = Annotated[Path | None, typer.Option(
    "--seeds", help="Seed pages or sitemaps (source 'seeds'): YAML topic -> URLs, or CSV topic,url rows.")]


@app.command()
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
        ov = _overrides(sets, store, home, tracking_uri, seeds, max_pages, max_images)
        result = _run(all_topics, profile, ov, resume)
    except FactoryError as e:
        _fail(e)
    _print_summary(result)


@app.command()
def demo(
    home: HomeOpt = None,
    sets: SetOpt = None,
) -> None:
    """The whole factory on the built-in demo site, offline, with the tiny profile."""
    try:
        topics = read_topics(None, DEMO_TOPICS_FILE)
        result = _run(topics, "tiny", _overrides(sets, home=home), None)
    except FactoryError as e:
        _fail(e)
    _print_summary(result)


def _run_store(profile: str, store: str | None, home: str | None) -> Any:
    from .lifecycle import run_store_for

    return run_store_for(load_config(profile, _overrides(store=store, home=home)))


@app.command()
def runs(
    profile: ProfileOpt = "tiny",
    store: StoreOpt = None,
    home: HomeOpt = None,
) -> None:
    """List the runs in the store with each stage's status."""
    try:
        rs = _run_store(profile, store, home)
        for run_id in rs.list():
            state = rs.open(run_id).state()
            stages = " ".join(f"{k}:{v.get('status', '?')}" for k, v in state["stages"].items())
            typer.echo(f"{run_id}  {state.get('status', 'running'):8s} {', '.join(state['topics'])}  [{stages}]")
    except FactoryError as e:
        _fail(e)


@app.command()
def explain(
    run_id: str,
    key: Annotated[str, typer.Argument(help="An item id (prefix), image URL or page URL.")],
    profile: ProfileOpt = "tiny",
    store: StoreOpt = None,
    home: HomeOpt = None,
) -> None:
    """Why is this image (not) in the run's dataset?"""
    import io

    import pyarrow.parquet as pq

    from .manifest import explain as explain_rows
    from .runstore import STAGES

    try:
        run = _run_store(profile, store, home).open(run_id)
        data = run.store.read_bytes(f"{run.key}/manifest.parquet")
        # pyarrow 25 aborts at interpreter exit ("terminate called without an active exception")
        # in about half of short processes that read an in-memory buffer with threads.
        table = pq.read_table(io.BytesIO(data), use_threads=False)
    except FactoryError as e:
        _fail(e)
    lines = explain_rows(table, STAGES, key)
    if not lines:
        typer.echo(f"no item of run {run_id} matches '{key}': the crawl never saw it "
                   f"(see {run.url}/crawl/pages.parquet and crawl_stats.json)")
        raise typer.Exit(1)
    typer.echo("\n".join(lines))


@app.command()
def ui(
    profile: ProfileOpt = "tiny",
    home: HomeOpt = None,
    tracking_uri: TrackingOpt = None,
    host: str = "127.0.0.1",
    port: int = 5000,
) -> None:
    """Start the MLflow UI on the factory's tracking store."""
    try:
        cfg = load_config(profile, _overrides(home=home, tracking_uri=tracking_uri))
    except FactoryError as e:
        _fail(e)
    uri = cfg.tracking.uri
    if uri.startswith(("http://", "https://")):
        typer.echo(f"the tracking store is a server already: open {uri}")
        return
    typer.echo(f"MLflow UI for {uri}: open http://{host}:{port} (Ctrl-C stops it)")
    artifacts = Path(cfg.home) / "mlartifacts"
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri,
           "--default-artifact-root", artifacts.as_uri(), "--host", host, "--port", str(port)]
    raise typer.Exit(subprocess.call(cmd))


@app.command()
def config(
    profile: ProfileOpt = "tiny",
    sets: SetOpt = None,
    seeds: SeedsOpt = None,
) -> None:
    """Print the resolved settings of a profile with overrides (and a seed file) applied."""
    try:
        cfg = load_config(profile, _overrides(sets, seeds=seeds))
    except FactoryError as e:
        _fail(e)
    typer.echo(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))


@app.command()
def profiles() -> None:
    """List the available profiles."""
    typer.echo("\n".join(available_profiles()))


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    app()
