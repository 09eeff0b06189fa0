"""Thresholds and the verdict: the part of evaluate the gate relies on."""

from __future__ import annotations

import math

from lora_factory.config import EvaluateConfig
from lora_factory.schemas import EvalResult, ThresholdCheck

from .findings import random_scorer_finding


def check_thresholds(scores: dict[str, float | None], cfg: EvaluateConfig) -> list[ThresholdCheck]:
    """Every configured threshold against its score; a score that was not measured fails."""
    checks = []
    for op, limits in ((">=", cfg.min_scores), ("<=", cfg.max_scores)):
        for name, limit in sorted(limits.items()):
            value = scores.get(name)
            ok = value is not None and math.isfinite(value) and (value >= limit if op == ">=" else value <= limit)
            checks.append(ThresholdCheck(score=name, op=op, threshold=limit, value=value, passed=ok))
    return checks


def judge(result: EvalResult, cfg: EvaluateConfig) -> EvalResult:
    """Apply the thresholds, name a random scorer, and set the verdict: pass only when every
    threshold holds and no finding is an error."""
    result.thresholds = check_thresholds(result.scores, cfg)
    if not any(f.code == "random_scorer" for f in result.findings):
        result.findings += random_scorer_finding(
            {r: result.scorers.get(r, r) for r in result.random_scorers})
    ok = all(t.passed for t in result.thresholds) and not result.errors()
    result.verdict = "pass" if ok else "fail"
    return result
