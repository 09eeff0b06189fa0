"""Read-only commands: ``runs``, ``explain`` and ``ui``. They describe runs, so they take the
store's location (``--store``, ``--home``, ``--tracking-uri``), never a profile."""

from __future__ import annotations

import subprocess
import sys
from typing import Annotated

import typer

from lora_factory.errors import FactoryError
from lora_factory.profiles import location_config

from .common import HomeOpt, StoreOpt, TrackingOpt, fail, overrides


def runs(store: StoreOpt = None, home: HomeOpt = None) -> None:
    """List the runs in the store with each stage's status."""
    from lora_factory.home import run_store_for

    try:
        rs = run_store_for(location_config(overrides(store=store, home=home)))
        for run_id in rs.list():
            state = rs.open(run_id).state()
            stages = " ".join(f"{k}:{v.get('status', '?')}" for k, v in state["stages"].items())
            typer.echo(f"{run_id}  {state.get('status', 'running'):8s} {', '.join(state['topics'])}  [{stages}]")
    except FactoryError as e:
        fail(e)


def explain(
    run_id: str,
    key: Annotated[str, typer.Argument(help="An item id (prefix), image URL or page URL.")],
    store: StoreOpt = None,
    home: HomeOpt = None,
) -> None:
    """Why is this image (not) in the run's dataset?"""
    import io

    import pyarrow.parquet as pq

    from lora_factory.home import run_store_for
    from lora_factory.manifest import explain as explain_rows
    from lora_factory.runstore import STAGES

    try:
        run = run_store_for(location_config(overrides(store=store, home=home))).open(run_id)
        data = run.store.read_bytes(f"{run.key}/manifest.parquet")
        # pyarrow 25 aborts at interpreter exit ("terminate called without an active exception")
        # in about half of short processes that read an in-memory buffer with threads.
        table = pq.read_table(io.BytesIO(data), use_threads=False)
    except FactoryError as e:
        fail(e)
    lines = explain_rows(table, STAGES, key)
    if not lines:
        typer.echo(f"no item of run {run_id} matches '{key}': the crawl never saw it "
                   f"(see {run.url}/crawl/pages.parquet and crawl_stats.json)")
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

    try:
        cfg = location_config(overrides(home=home, tracking_uri=tracking_uri))
    except FactoryError as e:
        fail(e)
    uri = cfg.tracking.uri
    if uri.startswith(("http://", "https://")):
        typer.echo(f"the tracking store is a server already: open {uri}")
        return
    typer.echo(f"MLflow UI for {uri}: open http://{host}:{port} (Ctrl-C stops it)")
    artifacts = home_of(cfg).mlartifacts
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri,
           "--default-artifact-root", artifacts.as_uri(), "--host", host, "--port", str(port)]
    raise typer.Exit(subprocess.call(cmd))
