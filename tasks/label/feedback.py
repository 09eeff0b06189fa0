"""Feedback samples in the training set: images the service generated that a user rated well and
captioned (``label.feedback_dir``, written by the retrain flow). They bypass the licence policy
and the caption candidates: the image is the factory's own output and the caption a person's; the
caption is fitted like a reviewer's (trigger word once, token budget) and its source is
``feedback``, its page ``feedback:generation/<id>``, so every later report shows where it came from.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from datatools.captions import TokenBudget, fit_human
from lora_factory.config import LabelConfig
from lora_factory.feedback_samples import FEEDBACK_SOURCE, read_samples
from lora_factory.manifest import decision

GENERATED_LICENSE = "generated"  # the factory's own output; the user's caption


@dataclass
class FeedbackLabels:
    labels: list[dict[str, Any]] = field(default_factory=list)
    decisions: list[dict[str, Any]] = field(default_factory=list)
    images: dict[str, Path] = field(default_factory=dict)  # item id -> the sample's image file


def feedback_labels(cfg: LabelConfig, budget: TokenBudget, stage: str, taken: set[str]) -> FeedbackLabels:
    """Label rows for ``cfg.feedback_dir``'s samples (none when it is unset); an image already
    among ``taken`` item ids is not added twice."""
    out = FeedbackLabels()
    if not cfg.feedback_dir:
        return out
    for sample, image in read_samples(cfg.feedback_dir):
        item_id = hashlib.sha256(image.read_bytes()).hexdigest()
        if item_id in taken or item_id in out.images:
            continue
        fitted = fit_human(sample.caption, cfg.trigger_word, cfg.template, cfg.caption_style, budget)
        out.labels.append({
            "item_id": item_id, "file_name": sample.file_name, "caption": fitted.caption,
            "caption_source": FEEDBACK_SOURCE, "machine_caption": sample.caption, "caption_score": None,
            "caption_tokens": fitted.tokens, "trimmed": fitted.trimmed, "candidates": [], "subject": [],
            "style": None, "movement": None, "medium": None, "keywords": [], "tag_source": "none",
            "license": GENERATED_LICENSE, "author": "", "page_url": f"feedback:generation/{sample.generation_id}"})
        out.decisions.append(decision(item_id, stage, True, detail=(
            f"feedback {sample.feedback_id}: generation {sample.generation_id} of version "
            f"{sample.model_version} rated {sample.rating}, caption by its user")))
        out.images[item_id] = image
    return out
