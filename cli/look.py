"""Read-only commands: ``runs``, ``explain`` and ``ui``. They describe runs, so they take the
store's location (``--store``, ``--home``, ``--tracking-uri``), never a profile."""

from __future__ import annotations

import subprocess
import sys
from typing import Annotated

import typer

from lora_factory.errors import FactoryError, StoreError
from lora_factory.profiles import location_config
from lora_factory.runstore import RunDir
from lora_factory.secrets import redact_url

from .common import HomeOpt, StoreOpt, TrackingOpt, fail, overrides


def runs(store: StoreOpt = None, home: HomeOpt = None) -> None:
    """List the runs in the store with each stage's status. A run whose process died while
    working on it shows as ``interrupted`` (resume it); a damaged run shows what is wrong."""
    from lora_factory.home import run_store_for

    try:
        rs = run_store_for(location_config(overrides(store=store, home=home)))
        ids = rs.list()
        if not ids:
            typer.echo(f"no runs in {rs.store.url} yet: start one with `lora-factory run -t TOPIC`, "
                       "or point --store / --home at the store that holds them")
            return
        for run_id in ids:
            typer.echo(_run_line(rs.open(run_id)))
    except FactoryError as e:
        fail(e)


def _run_line(run: RunDir) -> str:
    from lora_factory.runlock import holder

    try:
        state = run.state()
    except StoreError as e:
        return f"{run.run_id}  {'damaged':11s} {e}"
    status = state.get("status", "running")
    if status == "running" and holder(run) is None:
        status = "interrupted"
    stages = " ".join(f"{k}:{v.get('status', '?') if isinstance(v, dict) else '?'}"
                      for k, v in state["stages"].items())
    return f"{run.run_id}  {status:11s} {', '.join(map(str, state['topics']))}  [{stages}]"


def explain(
    run_id: str,
    key: Annotated[str, typer.Argument(help="An item id (prefix), image URL or page URL.")],
    store: StoreOpt = None,
    home: HomeOpt = None,
) -> None:
    """Why is this image (not) in the run's dataset?"""
    from lora_factory.explain import explain_key
    from lora_factory.home import run_store_for

    try:
        run = run_store_for(location_config(overrides(store=store, home=home))).open(run_id)
        lines = explain_key(run, key)
    except FactoryError as e:
        fail(e)
    if not lines:
        typer.echo(f"nothing in run {run_id} matches '{key}': the crawl never requested it "
                   "(not linked from the pages it crawled, or beyond its bounds: see crawl_stats.json)")
        raise typer.Exit(1)
    typer.echo("\n".join(lines))


def ui(
    home: HomeOpt = None,
    tracking_uri: TrackingOpt = None,
    host: str = "127.0.0.1",
    port: int = 5000,
) -> None:
    """Start the MLflow UI on the factory's tracking store."""
    from lora_factory.home import home_of
    from lora_factory.tracking import follow_moved_home

    try:
        cfg = location_config(overrides(home=home, tracking_uri=tracking_uri))
    except FactoryError as e:
        fail(e)
    uri = cfg.tracking.uri
    if uri.startswith(("http://", "https://")):
        typer.echo(f"the tracking store is a server already: open {redact_url(uri)}")
        return
    typer.echo(f"MLflow UI for {redact_url(uri)}: open http://{host}:{port} (Ctrl-C stops it)")
    artifacts = home_of(cfg).mlartifacts
    follow_moved_home(uri, artifacts)
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri,
           "--default-artifact-root", artifacts.as_uri(), "--host", host, "--port", str(port)]
    raise typer.Exit(subprocess.call(cmd))
