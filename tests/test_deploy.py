"""The gate's truth table: each threshold, missing metrics, findings, portability, the champion."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest

from deploy.decision import decision_record, licence_summary, version_tags
from deploy.gate import gate, render_markdown
from lora_factory.config import GateConfig
from lora_factory.schemas import EvalResult, Finding, ThresholdCheck

GOOD = {"overall_score": 0.30, "fidelity_gain": 0.05, "adherence_delta": -0.01, "diversity": 0.4,
        "copy_risk": 0.05}
STRICT = GateConfig(min_overall_score=0.2, min_fidelity_gain=0.0, max_adherence_drop=0.02,
                    min_diversity=0.3, max_copy_risk=0.1)


def _result(**changes: object) -> EvalResult:
    scores = {**GOOD, **changes.pop("scores", {})}  # type: ignore[dict-item]
    fields = {"base_ref": "tiny:sd", "family": "sd15", "lora_path": "l", "verdict": "pass", "scores": scores,
              "portability": {"passed": True}, **changes}
    return EvalResult(**fields)  # type: ignore[arg-type]


def test_a_good_candidate_without_champion_is_promoted() -> None:
    d = gate(_result(), STRICT, None)
    assert d.promote and d.reasons == [] and "no champion yet" in d.reason
    assert {c.name for c in d.checks} == {"overall_score", "fidelity_gain", "adherence_delta", "diversity",
                                          "copy_risk", "findings", "portability", "champion"}


@pytest.mark.parametrize("score,value,expected", [
    ("overall_score", 0.19, "overall_score 0.1900 fails >= 0.2"),
    ("fidelity_gain", -0.001, "fidelity_gain -0.0010 fails >= 0"),
    ("adherence_delta", -0.03, "adherence_delta -0.0300 fails >= -0.02"),  # worse than base by > margin
    ("diversity", 0.29, "diversity 0.2900 fails >= 0.3"),
    ("copy_risk", 0.11, "copy_risk 0.1100 fails <= 0.1"),
])
def test_each_threshold_blocks_alone(score: str, value: float, expected: str) -> None:
    d = gate(_result(scores={score: value}), STRICT, None)
    assert not d.promote and d.reasons == [expected]


def test_limits_are_inclusive_and_an_unset_threshold_is_not_checked() -> None:
    edge = {"overall_score": 0.2, "fidelity_gain": 0.0, "adherence_delta": -0.02, "diversity": 0.3,
            "copy_risk": 0.1}
    assert gate(_result(scores=edge), STRICT, None).promote
    loose = GateConfig(min_fidelity_gain=None, max_adherence_drop=None, max_copy_risk=None)
    d = gate(_result(scores={"fidelity_gain": -1.0, "adherence_delta": -1.0, "copy_risk": 1.0}), loose, None)
    assert d.promote and {c.name for c in d.checks} == {"findings", "portability", "champion"}


@pytest.mark.parametrize("value", [None, float("nan")])
def test_a_missing_metric_fails_or_is_skipped_as_configured(value: float | None) -> None:
    result = _result(scores={"diversity": value})
    failed = gate(result, STRICT, None)
    assert not failed.promote and failed.reasons[0].startswith("diversity not")
    skipped = gate(result, STRICT.model_copy(update={"on_missing": "skip"}), None)
    assert skipped.promote and "skipped: diversity" in skipped.reason
    assert next(c for c in skipped.checks if c.name == "diversity").skipped


def test_a_silent_failure_finding_blocks_and_a_warning_does_not() -> None:
    black = Finding(code="black_images", severity="error", message="3 of 4 images are black")
    warn = Finding(code="random_scorer", severity="warning", message="tiny scorer")
    assert gate(_result(findings=[warn]), STRICT, None).promote
    d = gate(_result(findings=[black, warn]), STRICT, None)
    assert not d.promote and d.reasons == ["black_images: 3 of 4 images are black"]


def test_portability_failed_or_not_checked() -> None:
    assert gate(_result(portability={"passed": False}), STRICT, None).reasons == [
        "portability: the exported files do not load alike"]
    assert gate(_result(portability={}), STRICT, None).reasons == ["portability not checked by the evaluation"]
    assert gate(_result(portability={}), STRICT.model_copy(update={"require_portability": False}), None).promote


def test_a_failed_evaluation_threshold_blocks() -> None:
    check = ThresholdCheck(score="leakage", op="<=", threshold=0.1, value=0.5, passed=False)
    d = gate(_result(thresholds=[check]), STRICT, None)
    assert d.reasons == ["evaluation threshold leakage 0.5000 fails <= 0.1"]


@pytest.mark.parametrize("champion,promote", [(None, True), (0.29, True), (0.30, False), (0.31, False)])
def test_it_must_beat_the_champion(champion: float | None, promote: bool) -> None:
    d = gate(_result(), STRICT, champion)
    assert d.promote is promote and d.champion_score == champion
    if not promote:
        assert d.reasons == [f"overall score 0.3000 does not beat the champion's {champion:.4f}"]


def test_every_reason_is_listed_and_the_record_is_json() -> None:
    d = gate(_result(scores={"overall_score": None, "copy_risk": 0.5}, portability={"passed": False}), STRICT, 0.1)
    assert len(d.reasons) == 4  # overall not measured, copy risk, portability, champion
    record = decision_record("lighthouse", "3", ["candidate"], d, "rejected")
    assert json.loads(json.dumps(record)) == record and record["model_uri"] == "models:/lighthouse/3"
    assert record["checks"][0] == asdict(d.checks[0])
    md = render_markdown(d, "lighthouse")
    assert "**reject**" in md and "| copy_risk | FAIL |" in md and "| champion | FAIL |" in md


def test_version_tags_and_licence_summary() -> None:
    d = gate(_result(), STRICT, None)
    tags = version_tags({"base_model": "tiny:sd"}, _result(), d)
    assert tags["overall_score"] == "0.300000" and tags["gate"] == "pass" and tags["base_model"] == "tiny:sd"
    assert licence_summary(["CC0", "CC-BY", None, "CC0"]) == "CC0: 2, CC-BY: 1, unknown: 1"
    assert licence_summary([]) == "none"
    assert licence_summary([f"L{i}" for i in range(10)], limit=2) == "L0: 1, L1: 1, +8 more"


def test_suggestions_follow_the_failed_checks() -> None:
    from deploy.suggest import suggest

    under = gate(_result(scores={"fidelity_gain": -0.1}), STRICT, None)
    assert suggest(under, []).changes == {"max_steps": 1.5, "rank": 2.0}
    over = gate(_result(scores={"copy_risk": 0.5, "adherence_delta": -0.2}), STRICT, None)
    s = suggest(over, [])
    assert s.changes == {"max_steps": 0.49, "learning_rate": 0.7, "more_data": 1.5}
    assert "memorised" in s.text and "max_steps x0.49" in s.text
    zero = Finding(code="zero_lora", severity="error", message="the adapter is zero")
    stuck = gate(_result(findings=[zero]), STRICT, 0.5)  # also loses to the champion
    assert suggest(stuck, ["zero_lora"]).changes == {"learning_rate": 2.0, "max_steps": 1.875, "more_data": 1.5}
    skipped = gate(_result(scores={"diversity": None}), STRICT.model_copy(update={"on_missing": "skip"}), None)
    assert suggest(skipped, []).changes == {} and suggest(skipped, []).text == "no training change suggested"
