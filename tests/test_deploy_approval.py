"""Human approval: the pure decision's truth table, and a real Prefect pause answered by
``deploy.approval.answer`` (what ``lora-factory approve`` calls) or ended by its timeout."""

from __future__ import annotations

import threading
import time
import uuid

import pytest

from deploy.approval import Approval, ApprovalOutcome, answer, ask, decide
from lora_factory.errors import FactoryError


@pytest.mark.parametrize("gate_passed,required,reply,on_timeout,promote,status", [
    (False, True, Approval(approve=True), "approve", False, "not_asked"),  # the gate comes first
    (False, False, None, "approve", False, "not_asked"),
    (True, False, None, "reject", True, "not_required"),
    (True, True, Approval(approve=True, comment="crisp"), "reject", True, "approved"),
    (True, True, Approval(approve=False, comment="off-model"), "approve", False, "rejected"),
    (True, True, None, "reject", False, "timeout_rejected"),
    (True, True, None, "approve", True, "timeout_approved"),
    (True, True, None, "wait", False, "timeout_rejected"),
])
def test_decide(gate_passed: bool, required: bool, reply: Approval | None, on_timeout: str, promote: bool,
                status: str) -> None:
    outcome = decide(gate_passed, required, reply, on_timeout)
    assert (outcome.promote, outcome.status) == (promote, status)
    if reply is not None and gate_passed and required:
        assert outcome.comment == reply.comment and reply.comment in outcome.note


def test_notes() -> None:
    assert ApprovalOutcome(False, "rejected", "too dark", "ann").note == "rejected by ann: too dark"
    assert "approved by deploy.on_timeout" in ApprovalOutcome(True, "timeout_approved").note


def _flow(run_id: str, timeout_s: int, on_timeout: str) -> Approval | None:
    from prefect import flow, task

    @task
    def wait() -> Approval | None:  # the deploy stage asks from inside its task
        return ask(run_id, "# Approve?", timeout_s, on_timeout, poll_s=1)

    @flow
    def approval_flow() -> Approval | None:
        return wait()

    return approval_flow()


def _answer_when_paused(run_id: str, approve: bool, comment: str, got: list[str]) -> None:
    for _ in range(600):  # bounded: up to ~5 minutes on a loaded machine
        try:
            got.append(answer(run_id, approve, comment, "tester"))
            return
        except FactoryError:
            time.sleep(0.5)


@pytest.mark.e2e
def test_a_paused_flow_is_answered_from_the_command_path_or_times_out() -> None:
    run_id = uuid.uuid4().hex[:8]
    with pytest.raises(FactoryError, match="not waiting for approval"):
        answer(run_id, True, "", "x")
    got: list[str] = []
    helper = threading.Thread(target=_answer_when_paused, args=(run_id, False, "colours off", got), daemon=True)
    helper.start()
    reply = _flow(run_id, 600, "reject")
    helper.join(timeout=60)
    assert got and reply is not None and (reply.approve, reply.comment, reply.approver) == (False, "colours off", "tester")
    assert _flow(uuid.uuid4().hex[:8], 2, "reject") is None  # nobody answers: the timeout policy decides
