"""``rollback``: move a concept's ``champion`` back to its ``previous`` version, recording why."""

from __future__ import annotations

from typing import Annotated

import typer

from lora_factory.errors import FactoryError

from .common import HomeOpt, SetOpt, TrackingOpt, fail, overrides

ConceptArg = Annotated[str, typer.Argument(help="The concept: its registered model name.")]
ReasonOpt = Annotated[str, typer.Option("--reason", "-r", help="Why (recorded on the registry).")]


def rollback(
    concept: ConceptArg,
    reason: ReasonOpt,
    sets: SetOpt = None,
    home: HomeOpt = None,
    tracking_uri: TrackingOpt = None,
) -> None:
    """Move CONCEPT's champion back to the previous version and record the reason."""
    from deploy.registry import rollback as move_back
    from lora_factory.context import make_tracker
    from lora_factory.profiles import location_config

    try:
        cfg = location_config(overrides(sets, home=home, tracking_uri=tracking_uri))
        record = move_back(make_tracker(cfg), concept, reason, cfg.deploy)
    except FactoryError as e:
        fail(e)
    typer.echo(f"{concept}: champion v{record['from_version']} -> v{record['to_version']} "
               f"(previous is now v{record['from_version']}); reason recorded")
