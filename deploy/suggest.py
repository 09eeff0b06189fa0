"""What to try next after a rejection: a pure mapping from the gate's failed checks to changes of
the training config, for people (decision.json) and for the next run's tuner.

The tuner reads it from MLflow: the deploy stage's run (tag ``lora_factory.stage = deploy``, child
of the factory run) carries ``verdict`` and ``suggestion`` (JSON: ``{"changes": {"max_steps": 1.5,
...}, "why": [...]}``, each change a factor on the current value; ``more_data`` a factor on the
number of images to crawl/keep).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from training.tuner.suggestion import SUGGESTION_TAG  # the deploy run's tag the next tuner reads

from .gate import GateDecision

__all__ = ["SUGGESTION_TAG", "Suggestion", "suggest"]

# failed check -> (changes, why). Factors multiply the value the run trained with.
_RULES: dict[str, tuple[dict[str, float], str]] = {
    "fidelity_gain": ({"max_steps": 1.5, "rank": 2.0},
                      "the LoRA barely moved towards its images: train longer, with more capacity"),
    "adherence_delta": ({"max_steps": 0.7, "learning_rate": 0.7},
                        "prompt adherence dropped against the base: the LoRA overrides prompts (overfit)"),
    "copy_risk": ({"max_steps": 0.7, "more_data": 1.5},
                  "near-copies of training images: memorised; fewer steps and more distinct images"),
    "diversity": ({"more_data": 1.5, "max_steps": 0.8},
                  "outputs look alike (mode collapse): more varied data, fewer steps"),
    "overall_score": ({"more_data": 1.5, "max_steps": 1.25},
                      "overall score below the bar: more data and a longer run"),
    "champion": ({"more_data": 1.5, "max_steps": 1.25},
                 "does not beat the champion: more data and a longer run"),
}
_FINDINGS: dict[str, tuple[dict[str, float], str]] = {
    "zero_lora": ({"learning_rate": 2.0, "max_steps": 1.5}, "the adapter stayed at zero: higher learning rate"),
    "identical_to_base": ({"learning_rate": 2.0, "max_steps": 1.5}, "images identical to the base model's"),
    "flat_loss": ({"learning_rate": 2.0}, "the loss did not move: higher learning rate"),
    "black_images": ({"learning_rate": 0.5}, "black images: the training diverged; lower learning rate"),
}


@dataclass(frozen=True)
class Suggestion:
    changes: dict[str, float] = field(default_factory=dict)  # config key -> factor on its value
    why: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        if not self.changes:
            return "no training change suggested"
        shown = ", ".join(f"{k} x{v:g}" for k, v in sorted(self.changes.items()))
        return f"{shown} ({'; '.join(self.why)})"


def suggest(decision: GateDecision, finding_codes: list[str]) -> Suggestion:
    """Combine the rules of every failed check (factors multiply, capped to 0.25..4)."""
    changes: dict[str, float] = {}
    why: list[str] = []
    failed = [c.name for c in decision.checks if not c.passed and not c.skipped]
    rules = [_RULES[n] for n in dict.fromkeys(failed) if n in _RULES]
    if "findings" in failed:
        rules += [_FINDINGS[code] for code in dict.fromkeys(finding_codes) if code in _FINDINGS]
    for delta, reason in rules:
        for key, factor in delta.items():
            changes[key] = min(4.0, max(0.25, changes.get(key, 1.0) * factor))
        why.append(reason)
    return Suggestion({k: round(v, 4) for k, v in changes.items() if abs(v - 1.0) > 1e-9}, why)
