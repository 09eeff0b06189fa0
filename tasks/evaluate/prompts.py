"""Which prompts evaluate renders: the same list for the same run, in a stable order.

Four kinds, because each answers another question: ``concept`` (the label stage's trigger word,
concept summary and top tags: does the LoRA learn the concept?), ``heldout`` (captions of the
training run's validation split: does it reproduce images it never saw?), ``generalisation``
(the concept in new contexts and styles: does it still follow the prompt?) and ``leakage`` (the
class without the trigger word: does it change what it should leave alone?).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

Kind = Literal["concept", "heldout", "generalisation", "leakage"]
TRIGGERED: tuple[Kind, ...] = ("concept", "heldout", "generalisation")  # prompts that call the LoRA


@dataclass(frozen=True)
class EvalPrompt:
    kind: Kind
    text: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Concept:
    """What the label stage said about the dataset (its caption stats), or the run's topic."""

    trigger: str
    topic: str
    summary: str | None = None
    tags: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return (self.summary or self.topic).strip().rstrip(".")


def _fill(template: str, concept: Concept) -> str:
    return " ".join(template.format(trigger=concept.trigger, topic=concept.topic,
                                    concept=concept.name).split())


def strip_trigger(text: str, trigger: str) -> str:
    """The prompt without the trigger word, for CLIP-T: the scorer never learned the token."""
    words = [w for w in text.replace(",", " , ").split() if w.strip(",") != trigger]
    return " ".join(words).replace(" , ", ", ").strip(" ,") or text


MAX_TAGS = 3  # tags in the "trigger, tag, tag, tag" concept prompt


def build_prompts(concept: Concept, templates: list[str], generalisation: list[str], leakage: list[str],
                  heldout: list[str], max_tags: int = MAX_TAGS) -> list[EvalPrompt]:
    """Every prompt once, concept prompts first; leakage prompts never carry the trigger word."""
    prompts = [EvalPrompt("concept", _fill(t, concept)) for t in templates]
    if concept.tags:
        prompts.append(EvalPrompt("concept", ", ".join([concept.trigger, *concept.tags[:max_tags]])))
    prompts += [EvalPrompt("heldout", " ".join(c.split())) for c in heldout if c.strip()]
    prompts += [EvalPrompt("generalisation", _fill(t, concept)) for t in generalisation]
    prompts += [EvalPrompt("leakage", strip_trigger(_fill(t, concept), concept.trigger)) for t in leakage]
    seen: set[tuple[str, str]] = set()
    unique = []
    for p in prompts:
        if (p.kind, p.text) not in seen:
            seen.add((p.kind, p.text))
            unique.append(p)
    return unique


def seeds_for(seed: int, num_seeds: int) -> list[int]:
    """Seed ``j`` of every prompt, the same for base and LoRA."""
    return [seed + j for j in range(num_seeds)]
