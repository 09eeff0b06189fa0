"""The promotion gate: a pure decision from an evaluation, the gate's thresholds and the champion.

Like a model-promotion pipeline, every trained adapter becomes a ``candidate``; it may become the
``champion`` of its concept only when every configured threshold holds (overall score, fidelity
gain over the base model, prompt adherence no worse than the base's by more than a margin, a
diversity floor, a copy-risk ceiling), the evaluation found no silent failure (black images, a
zero LoRA, ...) and none of its own thresholds failed, the exported files are portable, and its
overall score beats the current champion's (or there is none). No I/O here: ``deploy.decision``
writes the record, the registry moves the aliases.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from lora_factory.config import GateConfig
from lora_factory.schemas import EvalResult

Op = Literal[">=", "<="]


@dataclass(frozen=True)
class Check:
    """One condition of the gate and how the candidate fared."""

    name: str  # a score key, "evaluation", "findings", "portability" or "champion"
    passed: bool
    detail: str  # a human sentence: "fidelity_gain 0.0123 >= 0.0"
    skipped: bool = False  # not measured, and gate.on_missing is "skip"


@dataclass
class GateDecision:
    promote: bool
    reason: str
    overall_score: float | None
    champion_score: float | None
    reasons: list[str] = field(default_factory=list)  # every reason not to promote
    checks: list[Check] = field(default_factory=list)


def _limits(cfg: GateConfig) -> list[tuple[str, Op, float]]:
    """(score, op, limit) for each configured threshold; the adherence margin is a floor on the delta."""
    wanted: list[tuple[str, Op, float | None]] = [
        ("overall_score", ">=", cfg.min_overall_score),
        ("fidelity_gain", ">=", cfg.min_fidelity_gain),
        ("adherence_delta", ">=", None if cfg.max_adherence_drop is None else -cfg.max_adherence_drop),
        ("diversity", ">=", cfg.min_diversity),
        ("copy_risk", "<=", cfg.max_copy_risk),
    ]
    return [(name, op, limit) for name, op, limit in wanted if limit is not None]


def _score_check(name: str, op: Op, limit: float, value: float | None, on_missing: str) -> Check:
    if value is None or not math.isfinite(value):
        skipped = on_missing == "skip"
        what = "not measured" if value is None else f"not a number ({value})"
        return Check(name, skipped, f"{name} {what} (threshold {op} {limit:g})", skipped=skipped)
    ok = value >= limit if op == ">=" else value <= limit
    return Check(name, ok, f"{name} {value:.4f} {'meets' if ok else 'fails'} {op} {limit:g}")


def threshold_checks(result: EvalResult, cfg: GateConfig) -> list[Check]:
    """Every condition on the candidate alone (the champion comparison apart)."""
    checks = [_score_check(n, op, limit, result.scores.get(n), cfg.on_missing) for n, op, limit in _limits(cfg)]
    for t in result.thresholds:
        if not t.passed:
            shown = "not measured" if t.value is None else f"{t.value:.4f}"
            checks.append(Check("evaluation", False, f"evaluation threshold {t.score} {shown} fails {t.op} {t.threshold:g}"))
    errors = result.errors()
    checks.append(Check("findings", not errors, "; ".join(f"{f.code}: {f.message}" for f in errors)
                        or "no silent-failure finding"))
    if cfg.require_portability:
        passed = result.portability.get("passed") if result.portability else None
        if passed is None:
            skipped = cfg.on_missing == "skip"
            checks.append(Check("portability", skipped, "portability not checked by the evaluation", skipped=skipped))
        else:
            checks.append(Check("portability", bool(passed), "the exported files load alike" if passed
                                else "portability: the exported files do not load alike"))
    return checks


def champion_check(score: float | None, champion_score: float | None) -> Check:
    if champion_score is None:
        return Check("champion", True, "no champion yet")
    if score is not None and math.isfinite(score) and score > champion_score:
        return Check("champion", True, f"overall score {score:.4f} beats the champion's {champion_score:.4f}")
    shown = "not measured" if score is None else f"{score:.4f}"
    return Check("champion", False, f"overall score {shown} does not beat the champion's {champion_score:.4f}")


def gate(result: EvalResult, cfg: GateConfig, champion_score: float | None) -> GateDecision:
    """Promote when every check holds and the overall score beats the champion's (or none)."""
    score = result.scores.get("overall_score")
    checks = [*threshold_checks(result, cfg), champion_check(score, champion_score)]
    reasons = [c.detail for c in checks if not c.passed]
    if reasons:
        return GateDecision(False, "; ".join(reasons), score, champion_score, reasons, checks)
    skipped = [c.name for c in checks if c.skipped]
    shown = "n/a" if score is None else f"{score:.4f}"
    why = checks[-1].detail if champion_score is not None else "no champion yet"
    note = f" (not measured, skipped: {', '.join(skipped)})" if skipped else ""
    return GateDecision(True, f"passed every threshold{note}; overall score {shown}, {why}", score,
                        champion_score, [], checks)


def render_markdown(decision: GateDecision, concept: str, title: str = "Gate") -> str:
    """The decision as a markdown table (Prefect artifact, MLflow text)."""
    verdict = "**promote**" if decision.promote else "**reject**"
    lines = [f"# {title}: {concept}", "", f"Decision: {verdict} — {decision.reason}", "",
             "| check | result | detail |", "|---|---|---|"]
    for c in decision.checks:
        mark = "skipped" if c.skipped else ("pass" if c.passed else "FAIL")
        lines.append(f"| {c.name} | {mark} | {c.detail.replace('|', '/')} |")
    return "\n".join(lines) + "\n"
