"""Semantic text dedup: near-identical captions (MiniLM cosine) collapsed to one representative.

Why an image check: on the web the same alt text ("a saguaro cactus in the desert") sits under
genuinely different pictures, and dropping those would throw away training signal. By default a
text-duplicate pair only counts when the pictures agree too (CLIP image cosine when the profile
has a threshold for its CLIP model, else a loose perceptual-hash distance).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from datatools.dedup import Pairs, embedding_pairs, representatives

PairCheck = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (i, j) -> bool mask


def embed_texts(encode: Callable[[list[str]], np.ndarray], texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
    """L2-normalised float32 embeddings, one row per text."""
    rows = [np.asarray(encode(list(texts[s : s + batch_size])), dtype=np.float32)
            for s in range(0, len(texts), batch_size)]
    if not rows:
        return np.zeros((0, 384), np.float32)
    e = np.concatenate(rows)
    return e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)


def semantic_dedup(
    emb: np.ndarray,
    rank: np.ndarray,
    threshold: float,
    *,
    pair_check: PairCheck | None = None,
    exact_max_items: int = 20000,
    items_per_cluster: int = 1000,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, str]:
    """(dup_of, cosine, method) per row of ``emb`` (rank: lower is better, the best one wins).

    ``dup_of[i]`` is the row index of the kept representative or -1; ``pair_check`` can veto
    pairs (e.g. the pictures differ) before representatives are chosen.
    """
    pairs, method = embedding_pairs(emb, rank, threshold, exact_max_items=exact_max_items,
                                    items_per_cluster=items_per_cluster, seed=seed)
    if pair_check is not None and len(pairs[0]):
        ok = pair_check(pairs[0], pairs[1])
        pairs = (pairs[0][ok], pairs[1][ok], pairs[2][ok])
    dup_of, score = representatives(_both_ways(pairs), rank, len(emb))
    return dup_of, score, method


def _both_ways(p: Pairs) -> Pairs:
    return np.concatenate([p[0], p[1]]), np.concatenate([p[1], p[0]]), np.concatenate([p[2], p[2]])
