"""The metrics: pure functions of L2-normalised embeddings (rows), so tests can feed vectors
with known cosines and every scorer (CLIP, pixels, DINO) gives the same kind of number.

The overall score the gate compares across runs is a weighted sum of the scores (``WEIGHTS``):
fidelity gain counts most (the point of a LoRA), adherence next; diversity is a bonus, and copy
risk and leakage are penalties. A score that was not measured contributes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

WEIGHTS: dict[str, float] = {
    "fidelity_gain": 1.0,  # LoRA minus base similarity to the training images
    "adherence_delta": 0.5,  # LoRA minus base CLIP-T
    "diversity": 0.25,  # mean pairwise distance of the LoRA images
    "copy_risk": -0.5,  # share of near copies of training images
    "leakage": -0.25,  # how far class prompts without the trigger moved
}


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(len(a), len(b)) cosines of unit rows."""
    return np.atleast_2d(a) @ np.atleast_2d(b).T


def clip_t(image_emb: np.ndarray, text_emb: np.ndarray) -> np.ndarray:
    """Per image, its cosine with its own prompt's text (row ``i`` with row ``i``)."""
    return np.einsum("ij,ij->i", np.atleast_2d(image_emb), np.atleast_2d(text_emb))


def fidelity(generated: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Per generated image, its mean cosine with the reference (training) images: CLIP-I / DINO."""
    return cosine(generated, reference).mean(axis=1)


def diversity(emb: np.ndarray) -> float | None:
    """Mean pairwise distance (1 - cosine) over distinct pairs; a collapsed set scores ~0."""
    n = len(emb)
    if n < 2:
        return None
    sims = cosine(emb, emb)[np.triu_indices(n, k=1)]
    return float(np.mean(1.0 - sims))


@dataclass
class CopyRisk:
    nearest: np.ndarray  # per generated image: its nearest reference image's index
    similarity: np.ndarray  # ... and the cosine with it
    share_near: float  # share of generated images at or above the near-copy threshold
    exact: list[int]  # generated images at or above the exact-copy threshold


def copy_risk(generated: np.ndarray, reference: np.ndarray, near: float, exact: float) -> CopyRisk:
    sims = cosine(generated, reference)
    nearest = sims.argmax(axis=1)
    best = sims[np.arange(len(sims)), nearest]
    return CopyRisk(nearest, best, float(np.mean(best >= near)) if len(best) else 0.0,
                    [int(i) for i in np.flatnonzero(best >= exact)])


def leakage(base: np.ndarray, lora: np.ndarray) -> np.ndarray:
    """Per (base, LoRA) pair of the same class prompt and seed: 1 - cosine (0: untouched)."""
    return 1.0 - clip_t(base, lora)


def overall_score(scores: dict[str, float | None], weights: dict[str, float] = WEIGHTS) -> float:
    """The documented weighted sum of the measured scores."""
    return float(sum(w * scores[k] for k, w in weights.items() if scores.get(k) is not None))
