"""Structure of a dataset in embedding space: clusters, a 2-D map, and outliers.

Why these three: clusters stand for the views, poses and lightings a set covers (diversity, and
"75% of images are one cluster"), the map lets a person see it, and an image far from every
cluster is usually off-concept or a mistake. All plain numpy, seeded: the same set gives the
same answer.
"""

from __future__ import annotations

import numpy as np


def n_clusters(n: int) -> int:
    """k for n images: ~sqrt(n/2), between 1 and 8 (enough to tell views apart in a LoRA set)."""
    return int(np.clip(round(np.sqrt(n / 2)), 1, 8)) if n else 0


def kmeans(x: np.ndarray, k: int, seed: int = 0, iters: int = 30) -> tuple[np.ndarray, np.ndarray]:
    """(labels, centroids) of spherical k-means (k-means++ start) on L2-normalised rows."""
    n = len(x)
    if n == 0 or k <= 1:
        c = x.mean(axis=0, keepdims=True) if n else np.zeros((1, x.shape[1]), np.float32)
        return np.zeros(n, np.int64), _norm(c)
    rng = np.random.default_rng(seed)
    centres = [x[rng.integers(n)]]
    for _ in range(1, k):
        d = 1.0 - np.max(x @ np.stack(centres).T, axis=1)
        p = np.clip(d, 0, None)
        centres.append(x[rng.choice(n, p=p / p.sum())] if p.sum() > 0 else x[rng.integers(n)])
    c = np.stack(centres)
    labels = np.zeros(n, np.int64)
    for _ in range(iters):
        new = np.argmax(x @ c.T, axis=1)
        if _ and np.array_equal(new, labels):
            break
        labels = new
        c = _norm(np.stack([x[labels == j].mean(axis=0) if np.any(labels == j) else c[j] for j in range(k)]))
    return labels, c


def _norm(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def pca_2d(x: np.ndarray) -> np.ndarray:
    """The rows projected on their two main axes, scaled into [0, 1]."""
    if len(x) < 2:
        return np.full((len(x), 2), 0.5)
    centred = x - x.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    xy = centred @ vt[:2].T
    if xy.shape[1] < 2:
        xy = np.c_[xy, np.zeros(len(xy))]
    span = np.ptp(xy, axis=0)
    return (xy - xy.min(axis=0)) / np.where(span > 0, span, 1.0)


def outliers(x: np.ndarray, z: float, min_gap: float = 0.1, neighbours: int = 5,
             block: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """(mask, robust z) per row: its mean distance (1 - cosine) to its ``neighbours`` nearest rows,
    scored against the set's median and MAD; an outlier is above ``z`` *and* at least ``min_gap``
    farther than the median (a tight set's MAD is tiny, and its ordinary spread would look extreme).
    A lone image would form its own k-means cluster, so the distance is to other images, not to
    centroids. Fewer than 8 rows: no outliers (too few to tell what is normal)."""
    n = len(x)
    if n < 8:
        return np.zeros(n, bool), np.zeros(n)
    m = min(neighbours, n - 1)
    dist = np.zeros(n)
    for s in range(0, n, block):
        sims = x[s : s + block] @ x.T
        sims[np.arange(len(sims)), np.arange(s, s + len(sims))] = -np.inf
        top = -np.partition(-sims, m - 1, axis=1)[:, :m]
        dist[s : s + block] = 1.0 - top.mean(axis=1)
    med = float(np.median(dist))
    mad = max(float(np.median(np.abs(dist - med))), 0.02 * max(med, 1e-3), 1e-6)
    rz = 0.6745 * (dist - med) / mad
    return (rz > z) & (dist - med >= min_gap), rz
