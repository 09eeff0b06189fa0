"""``caption_stats.json``: what the tuner, evaluate and the model card need to know about captions."""

from __future__ import annotations

import statistics
from collections import Counter
from typing import Any

from datatools.captions import without
from lora_factory.config import LabelConfig
from lora_factory.schemas import CaptionStats

from .review import HUMAN
from .tagging import TAG_FIELDS


def tag_frequency(labels: list[dict[str, Any]], trigger: str) -> Counter[str]:
    """Comma-separated pieces of the captions (the trigger word aside) -> images that have them,
    as sd-scripts counts tags."""
    counts: Counter[str] = Counter()
    for lab in labels:
        body = without(lab["caption"], [trigger])
        counts.update({t.strip().lower() for t in body.split(",") if t.strip()})
    return counts


def tag_field_frequency(labels: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """The tagger's tags per field -> tag -> images."""
    out: dict[str, dict[str, int]] = {}
    for name in TAG_FIELDS:
        counts: Counter[str] = Counter()
        for lab in labels:
            value = lab.get(name)
            counts.update(set(value) if isinstance(value, list) else ({value} if value else set()))
        out[name] = dict(counts.most_common())
    return out


def caption_stats(labels: list[dict[str, Any]], cfg: LabelConfig, *, token_budget: int | None = None,
                  summary: str | None = None, traits: list[str] | None = None,
                  tagger: dict[str, int] | None = None) -> CaptionStats:
    """Coverage, length, sources, tag frequency and the concept summary of the labelled images."""
    words = sorted(len(without(lab["caption"], [cfg.trigger_word]).split()) for lab in labels)
    tokens = [lab["caption_tokens"] for lab in labels if lab.get("caption_tokens") is not None]
    captioned = sum(1 for w in words if w)
    return CaptionStats(
        num_images=len(labels),
        captioned=captioned,
        coverage=captioned / len(words) if words else 0.0,
        words_mean=sum(words) / len(words) if words else 0.0,
        words_median=float(statistics.median(words)) if words else 0.0,
        words_max=words[-1] if words else 0,
        tokens_max=max(tokens) if tokens else None,
        over_token_budget=sum(1 for lab in labels if lab.get("trimmed")),
        sources=dict(Counter(lab["caption_source"] for lab in labels)),
        tag_frequency=dict(tag_frequency(labels, cfg.trigger_word).most_common()),
        trigger_word=cfg.trigger_word,
        concept_summary=summary,
        task_type=cfg.task_type,
        token_budget=token_budget,
        caption_style=cfg.caption_style,
        traits=list(traits or []),
        tag_fields=tag_field_frequency(labels),
        tagger=dict(tagger or {}),
        hallucinations=sum(1 for lab in labels for c in lab.get("candidates") or [] if c["hallucination"]),
        human_captions=sum(1 for lab in labels if lab["caption_source"] == HUMAN),
    )
