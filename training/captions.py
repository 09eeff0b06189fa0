"""Caption augmentation: tag shuffling with kept leading tokens, and caption dropout.

Why: a LoRA trained on captions in one fixed order learns the order; shuffling the comma-separated
tags (as kohya's ``shuffle_caption`` does) spreads what each tag means over its own words. The
first ``keep_tokens`` tags stay in place because the label stage puts the trigger word first, and
the trigger word is what a user types. Caption dropout trains a share of steps on the empty
caption, which is what classifier-free guidance's unconditional branch sees at inference.

Every draw comes from the ``random.Random`` the caller passes, seeded per sample by the data
order, so an augmented epoch is the same on a resumed run.
"""

from __future__ import annotations

import random

TAG_SEPARATOR = ","


def augment_caption(caption: str, rng: random.Random, *, dropout: float = 0.0, shuffle: bool = False,
                    keep_tokens: int = 0) -> str:
    """The caption a training step sees: ``""`` with probability ``dropout``, else the caption
    with its tags after the first ``keep_tokens`` shuffled (when ``shuffle``)."""
    drop = rng.random() < dropout if dropout > 0 else False
    if drop:
        return ""
    if not shuffle:
        return caption
    tags = [t.strip() for t in caption.split(TAG_SEPARATOR)]
    tags = [t for t in tags if t]
    head, tail = tags[:keep_tokens], tags[keep_tokens:]
    rng.shuffle(tail)
    return f"{TAG_SEPARATOR} ".join(head + tail)
