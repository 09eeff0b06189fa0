"""Dataset statistics for the LoRATuner: size, diversity, visual variance, captions, aspect, domain.

Everything is O(n d) or O(n d^2) on the saved embeddings: the mean pairwise cosine distance comes
from the norm of the mean vector, effective rank and PCA entropy from the covariance spectrum.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from lora_factory.schemas import CURATE_STATS_VERSION

ASPECT_BINS = (0.0, 0.6, 0.8, 0.95, 1.05, 1.25, 1.7, np.inf)  # width / height
ASPECT_LABELS = ("tall_under_0.6", "0.6-0.8", "0.8-0.95", "square", "1.05-1.25", "1.25-1.7", "wide_over_1.7")


def mean_pairwise_cosine_distance(emb: np.ndarray) -> float | None:
    """Mean of 1 - cos over all distinct pairs of L2-normalised rows, in O(n d)."""
    n = len(emb)
    if n < 2:
        return None
    s = emb.astype(np.float64).sum(axis=0)
    mean_cos = (float(s @ s) - float(np.einsum("ij,ij->", emb, emb))) / (n * (n - 1))
    return 1.0 - mean_cos


def spectrum_stats(emb: np.ndarray) -> dict[str, float | None]:
    """Effective rank (exp of the spectral entropy) and normalised PCA entropy of the centred rows,
    plus the total variance (trace of the covariance)."""
    n = len(emb)
    if n < 2:
        return {"effective_rank": None, "pca_entropy": None, "total_variance": None}
    x = emb.astype(np.float64) - emb.mean(axis=0, dtype=np.float64)
    eig = np.clip(np.linalg.eigvalsh(x.T @ x / (n - 1)), 0, None)
    total = float(eig.sum())
    if total <= 0:
        return {"effective_rank": 1.0, "pca_entropy": 0.0, "total_variance": 0.0}
    p = eig[eig > 0] / total
    h = float(-(p * np.log(p)).sum())
    k = min(n - 1, emb.shape[1])
    return {"effective_rank": float(np.exp(h)), "pca_entropy": h / np.log(k) if k > 1 else 0.0,
            "total_variance": total}


def aspect_histogram(width: np.ndarray, height: np.ndarray) -> dict[str, int]:
    ar = width / np.maximum(height, 1)
    counts, _ = np.histogram(ar, bins=ASPECT_BINS)
    return dict(zip(ASPECT_LABELS, counts.astype(int).tolist(), strict=True))


def zero_shot_domain(image_emb: np.ndarray, prompt_emb: np.ndarray, names: Sequence[str],
                     temperature: float = 100.0) -> dict[str, Any]:
    """Mean CLIP zero-shot probabilities over the images and the most likely domain."""
    if not len(image_emb) or not len(names):
        return {"domain": None, "probabilities": {}}
    logits = temperature * (image_emb @ prompt_emb.T)
    logits -= logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    p /= p.sum(axis=1, keepdims=True)
    mean = p.mean(axis=0)
    return {"domain": names[int(mean.argmax())],
            "probabilities": {n: round(float(v), 4) for n, v in zip(names, mean, strict=True)}}


def dataset_stats(
    *,
    width: np.ndarray,
    height: np.ndarray,
    captions: Sequence[str],
    text_emb: np.ndarray | None,
    image_emb: np.ndarray | None,
    domain: Mapping[str, Any] | None,
    models: Mapping[str, str | None],
) -> dict[str, Any]:
    """The statistics of the kept set (rows in the same order in every argument)."""
    words = np.array([len(c.split()) for c in captions], dtype=np.float64)
    has = words > 0
    stats: dict[str, Any] = {
        "schema_version": CURATE_STATS_VERSION,
        "num_images": len(captions),
        "caption_coverage": float(has.mean()) if len(has) else 0.0,
        "caption_words_mean": float(words[has].mean()) if has.any() else 0.0,
        "caption_words_median": float(np.median(words[has])) if has.any() else 0.0,
        "resolution_short_side_median": float(np.median(np.minimum(width, height))) if len(width) else 0.0,
        "aspect_histogram": aspect_histogram(width, height),
        "models": dict(models),
    }
    if text_emb is not None:
        t = text_emb[np.any(text_emb != 0, axis=1)]
        spec = spectrum_stats(t)
        stats["text_diversity"] = {"mean_pairwise_distance": mean_pairwise_cosine_distance(t),
                                   "effective_rank": spec["effective_rank"], "pca_entropy": spec["pca_entropy"]}
    if image_emb is not None:
        spec = spectrum_stats(image_emb)
        stats["visual_diversity"] = {"mean_pairwise_distance": mean_pairwise_cosine_distance(image_emb),
                                     "effective_rank": spec["effective_rank"], "pca_entropy": spec["pca_entropy"]}
        stats["visual_variance"] = spec["total_variance"]
    if domain is not None:
        stats["estimated_domain"] = dict(domain)
    return stats


def flat_metrics(stats: Mapping[str, Any], prefix: str = "stats_") -> dict[str, float]:
    """Numeric leaves as MLflow metrics (``stats_text_diversity_effective_rank`` ...)."""
    out: dict[str, float] = {}

    def walk(d: Mapping[str, Any], key: str) -> None:
        for k, v in d.items():
            if k == "schema_version":
                continue
            name = f"{key}{k}"
            if isinstance(v, Mapping):
                walk(v, name + "_")
            elif isinstance(v, (int, float)) and not isinstance(v, bool) and v is not None and np.isfinite(v):
                out[name] = float(v)

    walk(stats, prefix)
    return out
