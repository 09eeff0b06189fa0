"""The promotion gate: a pure decision from an evaluation and the champion's score.

Like a model-promotion pipeline, every trained adapter becomes a ``candidate``; it becomes the
``champion`` only when its evaluation passed (every configured threshold held, no error
finding, the exported files portable) and its overall score beats the current champion's (or
there is no champion).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lora_factory.schemas import EvalResult


@dataclass
class GateDecision:
    promote: bool
    reason: str
    overall_score: float | None
    champion_score: float | None
    reasons: list[str] = field(default_factory=list)  # every reason not to promote


def _blockers(result: EvalResult) -> list[str]:
    reasons = [f"{t.score} {t.value if t.value is None else round(t.value, 4)} fails {t.op} {t.threshold}"
               for t in result.thresholds if not t.passed]
    reasons += [f"{f.code}: {f.message}" for f in result.errors()]
    if result.portability and not result.portability.get("passed", True):
        reasons.append("portability: the exported files do not load alike")
    return reasons


def gate(result: EvalResult, champion_score: float | None) -> GateDecision:
    """Promote when the evaluation passed and its overall score beats the champion's."""
    score = result.scores.get("overall_score")
    reasons = _blockers(result)
    if champion_score is not None and (score is None or score <= champion_score):
        shown = "none" if score is None else f"{score:.4f}"
        reasons.append(f"overall score {shown} does not beat the champion's {champion_score:.4f}")
    if reasons:
        return GateDecision(False, "; ".join(reasons), score, champion_score, reasons)
    why = "no champion yet" if champion_score is None else f"beats the champion's {champion_score:.4f}"
    shown = "n/a" if score is None else f"{score:.4f}"
    return GateDecision(True, f"passed every threshold; overall score {shown}, {why}", score, champion_score)
