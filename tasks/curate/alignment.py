"""CLIP image-text and image-topic alignment, and the MiniLM text-topic check, as decisions.

Why pure functions of embeddings: tiny CLIP weights are random, so the decision logic is tested
on controlled vectors, and the real model's thresholds live in the profile per model reference.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from .checks import Check, below


def rowwise_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """cos(a[k], b[k]) for L2-normalised rows; nan where either row is all zeros (missing)."""
    s = np.einsum("ij,ij->i", a, b).astype(np.float64)
    missing = ~(np.any(a != 0, axis=1) & np.any(b != 0, axis=1))
    s[missing] = np.nan
    return s


def best_topic_cosine(emb: np.ndarray, topic_emb: np.ndarray) -> np.ndarray:
    """Per row, the cosine to the closest of the run's topics; nan for missing rows or no topics.

    Why the closest of all topics, not the item's own: a crawl reaches one topic's pages from
    another's seed, and the LoRA is trained on the union of the run's topics.
    """
    s = np.full(len(emb), np.nan)
    if len(topic_emb) and len(emb):
        s = (emb @ topic_emb.T).max(axis=1).astype(np.float64)
        s[~np.any(emb != 0, axis=1)] = np.nan
    return s


def clip_checks(
    image_emb: np.ndarray,
    text_emb: np.ndarray,
    topic_emb: np.ndarray,
    thresholds: Mapping[str, float | None],
    model: str,
) -> tuple[list[Check], dict[str, np.ndarray]]:
    """(checks, scores): ``off_topic`` when the image's cosine to its closest topic prompt
    (rows of ``topic_emb``) is < ``image_topic``, then ``low_alignment`` when image-text cosine
    < ``image_text``. Rows of zeros (no image, no text) give nan scores, which never drop."""
    img_text = rowwise_cosine(image_emb, text_emb)
    img_topic = best_topic_cosine(image_emb, topic_emb)
    checks = [
        below("clip_image_topic", "off_topic", img_topic, thresholds.get("image_topic"),
              "CLIP image-topic cosine {score:.3f} < {limit} (" + model + ")"),
        below("clip_image_text", "low_alignment", img_text, thresholds.get("image_text"),
              "CLIP image-text cosine {score:.3f} < {limit} (" + model + ")"),
    ]
    return [c for c in checks if c is not None], {"clip_image_text": img_text, "clip_image_topic": img_topic}


def text_topic_check(text_emb: np.ndarray, topic_emb: np.ndarray, limit: float | None) -> tuple[Check | None, np.ndarray]:
    """``off_topic`` when the page text's MiniLM cosine to the closest topic is below ``limit``."""
    score = best_topic_cosine(text_emb, topic_emb)
    return below("min_text_topic", "off_topic", score, limit,
                 "text-topic cosine {score:.3f} < curate.min_text_topic={limit}"), score
