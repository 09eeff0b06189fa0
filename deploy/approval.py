"""Human approval of a candidate that passed the gate.

``decide`` is the pure part (gate result, policy, the approver's answer or a timeout -> verdict);
``ask`` pauses the Prefect flow run with ``wait_for_input`` (the UI shows a form; ``answer`` fills
it from the command line) and returns the answer, or None when the pause timed out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from prefect.input import RunInput

from lora_factory.errors import FactoryError, StageError

Status = Literal["not_asked", "not_required", "approved", "rejected", "timeout_approved", "timeout_rejected"]
PAUSE_KEY = "lora-factory-approval"
RUN_TAG_PREFIX = "lora-factory-run:"
WAIT_FOREVER_S = 10 * 365 * 86400  # "wait": Prefect needs a number; ten years is none in practice


class Approval(RunInput):
    """The approver's answer (Prefect shows it as a form on the paused flow run)."""

    approve: bool
    comment: str = ""
    approver: str = ""


@dataclass(frozen=True)
class ApprovalOutcome:
    promote: bool
    status: Status
    comment: str = ""
    approver: str = ""

    @property
    def note(self) -> str:
        """One sentence for decision.json and the registry."""
        who = f" by {self.approver}" if self.approver else ""
        said = f": {self.comment}" if self.comment else ""
        return {"not_asked": "the gate rejected it: no approval asked",
                "not_required": "no approval required",
                "approved": f"approved{who}{said}", "rejected": f"rejected{who}{said}",
                "timeout_approved": "nobody answered in time: approved by deploy.on_timeout",
                "timeout_rejected": "nobody answered in time: rejected by deploy.on_timeout"}[self.status]


def decide(gate_passed: bool, required: bool, answer: Approval | None, on_timeout: str) -> ApprovalOutcome:
    """The verdict: the gate first, then (when required) the person, then the timeout policy.
    ``answer`` None means the pause timed out ("wait" never times out, so it rejects here)."""
    if not gate_passed:
        return ApprovalOutcome(False, "not_asked")
    if not required:
        return ApprovalOutcome(True, "not_required")
    if answer is not None:
        status: Status = "approved" if answer.approve else "rejected"
        return ApprovalOutcome(answer.approve, status, answer.comment, answer.approver)
    if on_timeout == "approve":
        return ApprovalOutcome(True, "timeout_approved")
    return ApprovalOutcome(False, "timeout_rejected")


def ask(run_id: str, description: str, timeout_s: int, on_timeout: str, poll_s: int = 5) -> Approval | None:
    """Pause the current flow run until a person answers; None when ``timeout_s`` passed."""
    from prefect.context import FlowRunContext
    from prefect.exceptions import FlowPauseTimeout
    from prefect.flow_runs import pause_flow_run

    context = FlowRunContext.get()
    if context is None or context.flow_run is None:
        raise StageError("deploy.approval is 'required' but the deploy stage runs outside a Prefect flow: "
                         "run it with `lora-factory run`, or set deploy.approval=none")
    _tag(context.flow_run.id, run_id)
    timeout = WAIT_FOREVER_S if on_timeout == "wait" else timeout_s
    try:
        return pause_flow_run(wait_for_input=Approval.with_initial_data(description=description, approve=False),
                              timeout=timeout, poll_interval=poll_s, key=PAUSE_KEY)
    except FlowPauseTimeout:
        return None


def _tag(flow_run_id: object, run_id: str) -> None:
    """Tag the flow run with the factory's run id, so ``answer(run_id)`` finds it."""
    from prefect import get_client

    with get_client(sync_client=True) as client:
        run = client.read_flow_run(flow_run_id)  # type: ignore[arg-type]
        tags = sorted({*(run.tags or []), RUN_TAG_PREFIX + run_id})
        client.update_flow_run(flow_run_id, tags=tags)  # type: ignore[arg-type]


def paused_flow_run(run_id: str) -> object:
    """The id of the paused flow run of factory run ``run_id``."""
    from prefect import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
        FlowRunFilterTags,
    )
    from prefect.client.schemas.objects import StateType

    flt = FlowRunFilter(tags=FlowRunFilterTags(all_=[RUN_TAG_PREFIX + run_id]),
                        state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED])))
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_run_filter=flt, limit=1)
    if not runs:
        raise FactoryError(f"run {run_id} is not waiting for approval (no paused flow run tagged "
                           f"{RUN_TAG_PREFIX}{run_id} on this Prefect server; is PREFECT_API_URL the run's?)")
    return runs[0].id


def answer(run_id: str, approve: bool, comment: str, approver: str) -> str:
    """Resume the paused flow run of ``run_id`` with the decision; returns the flow run id."""
    from prefect.flow_runs import resume_flow_run

    flow_run_id = paused_flow_run(run_id)
    resume_flow_run(flow_run_id, run_input={"approve": approve, "comment": comment, "approver": approver})  # type: ignore[arg-type]
    return str(flow_run_id)
