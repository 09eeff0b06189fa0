"""``server``: the factory's local services (Prefect and MLflow UIs, a worker, the deployments)."""

from __future__ import annotations

from typing import Annotated

import typer

from lora_factory.errors import FactoryError
from lora_factory.profiles import location_config

from .common import HomeOpt, SetOpt, TrackingOpt, fail, overrides


def server(
    stop: Annotated[bool, typer.Option("--stop", help="End the services this home's server started.")] = False,
    sets: SetOpt = None,
    home: HomeOpt = None,
    tracking_uri: TrackingOpt = None,
) -> None:
    """Start persistent Prefect and MLflow servers on loopback, a process work pool with a worker,
    and deploy prefect.yaml; later `lora-factory run`s use this server (and show in its UI)."""
    from .local_services import start_server, stop_server

    try:
        cfg = location_config(overrides(sets, home=home, tracking_uri=tracking_uri))
        if stop:
            stopped = stop_server(cfg)
            typer.echo(f"stopped {', '.join(stopped)}" if stopped else "no server was running for this home")
            return
        typer.echo("starting the Prefect server, the MLflow server and a worker ...")
        state = start_server(cfg)
    except FactoryError as e:
        fail(e)
    typer.echo("\n".join([
        f"Prefect UI   {state.prefect_url}   (PREFECT_API_URL={state.api_url})",
        f"MLflow UI    {state.mlflow_url}",
        f"work pool    {state.work_pool}, deployments from prefect.yaml",
        "`lora-factory run` now sends its flow runs here; `lora-factory server --stop` ends it all.",
    ]))
