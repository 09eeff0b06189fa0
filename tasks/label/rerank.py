"""Re-ranking: the image itself picks its caption, by CLIP image-text similarity.

Why CLIP: it measures how well a text describes the pixels, the way the text encoder of the
model we train will read it. The candidate with the highest cosine wins; a candidate far below
the others (by ``hallucination_margin`` under the median of the rest) describes something the
image does not show, and is flagged as a likely hallucination. Scores are recorded for every
candidate, so the report shows why one won.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence

import numpy as np

from lora_factory.models.clip_scorer import ClipScorer

from .candidates import Candidate, ItemCandidates


def choose(scores: Sequence[float], margin: float) -> tuple[int, list[bool]]:
    """(index of the best score, per-candidate hallucination flags). Ties: the first wins
    (the candidates are in config priority order)."""
    if not scores:
        raise ValueError("no candidates to choose from")
    best = int(np.argmax(np.asarray(scores, dtype=np.float64)))
    flags = []
    for i, s in enumerate(scores):
        others = [o for j, o in enumerate(scores) if j != i]
        flags.append(bool(others) and s < statistics.median(others) - margin)
    return best, flags


def score_candidates(
    items: list[ItemCandidates],
    image_embeddings: np.ndarray,
    embed_texts: Callable[[list[str]], np.ndarray],
) -> None:
    """Set every candidate's score: cosine of its item's image row and its text (texts embedded
    once, however many images share them)."""
    texts = list(dict.fromkeys(c.text for ic in items for c in ic.candidates))
    if not texts:
        return
    sims = ClipScorer.cosine(image_embeddings, embed_texts(texts))
    row = {t: i for i, t in enumerate(texts)}
    for i, ic in enumerate(items):
        for c in ic.candidates:
            c.score = float(sims[i, row[c.text]])


def pick(ic: ItemCandidates, margin: float) -> Candidate:
    """The winning candidate; flags set. Without scores (no re-ranking) the first one wins."""
    if not ic.candidates:
        raise ValueError(f"item {ic.item['item_id']} has no caption candidate")
    if any(c.score is None for c in ic.candidates):
        return ic.candidates[0]
    best, flags = choose([c.score for c in ic.candidates], margin)  # type: ignore[misc]
    for c, flag in zip(ic.candidates, flags, strict=True):
        c.hallucination = flag
    return ic.candidates[best]

