"""``rollback``: move a concept's ``champion`` back to its ``previous`` version, recording why.
``approve``: answer a run that waits for a person's approval (deploy.approval: required)."""

from __future__ import annotations

from typing import Annotated

import typer

from lora_factory.errors import FactoryError

from .common import HomeOpt, SetOpt, TrackingOpt, fail, overrides

ConceptArg = Annotated[str, typer.Argument(help="The concept: its registered model name.")]
RunArg = Annotated[str, typer.Argument(help="The factory run id waiting for approval.")]
RejectOpt = Annotated[bool, typer.Option("--reject", help="Reject the candidate (default: approve).")]
CommentOpt = Annotated[str, typer.Option("--comment", "-m", help="Why; recorded with the decision.")]
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


def approve(run_id: RunArg, reject: RejectOpt = False, comment: CommentOpt = "") -> None:
    """Approve (or --reject) the candidate of RUN, which waits on the Prefect server (PREFECT_API_URL)."""
    import getpass

    from deploy.approval import answer

    try:
        flow_run = answer(run_id, not reject, comment, getpass.getuser())
    except FactoryError as e:
        fail(e)
    typer.echo(f"run {run_id}: {'rejected' if reject else 'approved'} (flow run {flow_run} resumes)")
