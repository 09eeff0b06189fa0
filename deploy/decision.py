"""What a deploy records: the registered version's tags and ``deploy/decision.json``.

Pure functions of their inputs, so the record's shape is tested without a registry.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

from lora_factory.schemas import EvalResult
from training.save import TRAINING_ARGS_NAME

from .gate import GateDecision

Verdict = Literal["promoted", "rejected", "awaiting_approval"]


def licence_summary(licences: Iterable[str | None], limit: int = 8) -> str:
    """``CC-BY-4.0: 12, CC0-1.0: 3``: the training images' licences, most common first."""
    counts = Counter(lic or "unknown" for lic in licences)
    shown = [f"{lic}: {n}" for lic, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:limit]]
    more = len(counts) - limit
    return ", ".join(shown) + (f", +{more} more" if more > 0 else "") if shown else "none"


def dataset_hash(lora_dir: Path) -> str:
    """The hash of the training set the trainer recorded in the adapter folder ("" if none)."""
    path = Path(lora_dir) / TRAINING_ARGS_NAME
    try:
        return str(json.loads(path.read_text(encoding="utf-8")).get("dataset_hash") or "")
    except (OSError, ValueError):
        return ""


def version_tags(facts: Mapping[str, str], result: EvalResult, decision: GateDecision) -> dict[str, str]:
    """The tags a registered version carries: the run's facts (base model, trigger word, dataset
    hash, licences), every score, the evaluation's verdict and the gate's."""
    scores = {k: f"{v:.6f}" for k, v in result.scores.items() if v is not None}
    return {**facts, **scores, "eval_verdict": result.verdict,
            "gate": "pass" if decision.promote else "fail", "gate_reason": decision.reason}


def decision_record(concept: str, version: str, aliases: list[str], decision: GateDecision,
                    verdict: Verdict, **extra: Any) -> dict[str, Any]:
    """The content of ``deploy/decision.json`` (JSON-safe)."""
    return {"concept": concept, "registered_model": concept, "version": version, "aliases": aliases,
            "model_uri": f"models:/{concept}/{version}", "verdict": verdict, **asdict(decision), **extra}
