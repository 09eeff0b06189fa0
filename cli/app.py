"""The Typer app: one command per function, each in the module of its kind."""

from __future__ import annotations

import typer

from . import dag, deploy, evaluate, inspect, look, run, serve, server, settings, tune

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Turn a list of topics into a trained, evaluated and registered LoRA adapter.",
)
app.command()(run.run)
app.command()(run.demo)
app.command()(look.runs)
app.command()(look.explain)
app.command()(look.ui)
app.command()(settings.config)
app.command()(settings.profiles)
app.command()(dag.dag)
app.command()(server.server)
app.command()(serve.serve)
app.command()(tune.tune)
app.command()(deploy.rollback)
app.command()(deploy.approve)
app.command()(inspect.inspect)
app.command()(evaluate.evaluate)


def main() -> None:  # pragma: no cover - console entry point
    app()
