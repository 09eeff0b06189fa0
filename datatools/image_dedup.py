"""Image duplicates: identical pixels, perceptual-hash near copies, CLIP-embedding near copies.

Why three: a pixel hash catches re-encodings exactly and for free; pHash+dHash catch resizes,
light crops, recompression and recolours; CLIP image cosine catches what hashes miss (larger
crops, flips, watermark overlays) when the profile trusts its CLIP model for it.
"""

from __future__ import annotations

import numpy as np

from .dedup import embedding_pairs, empty_pairs, hamming, hash_pairs, representatives


def exact_duplicates(pixel_sha: list[str | None], rank: np.ndarray) -> np.ndarray:
    """dup_of per item: the best-ranked item with the same decoded pixels (-1: none)."""
    n = len(pixel_sha)
    keys = np.array([s or f"\0{i}" for i, s in enumerate(pixel_sha)], dtype=object)
    order = np.lexsort((rank, keys.astype(str)))
    sorted_keys = keys[order]
    starts = np.r_[True, sorted_keys[1:] != sorted_keys[:-1]]
    group_first = order[np.maximum.accumulate(np.where(starts, np.arange(n), 0))]
    dup_of = np.full(n, -1, np.int64)
    dup_of[order] = np.where(group_first == order, -1, group_first)
    return dup_of


def hash_near_duplicates(
    phash: np.ndarray,
    dhash: np.ndarray,
    log_aspect: np.ndarray,
    rank: np.ndarray,
    *,
    max_phash: int,
    max_dhash: int,
    max_aspect_change: float,
) -> tuple[np.ndarray, np.ndarray]:
    """(dup_of, pHash distance) per item. A pair is a near copy when pHash and dHash are both
    within their limits and the aspect ratio barely changed (hashes are computed on a squashed
    square, so they are blind to proportions: two framings of one scene are not copies)."""
    i, j, d = hash_pairs(phash, max_phash)
    ok = (hamming(dhash[i], dhash[j]) <= max_dhash) & (np.abs(log_aspect[i] - log_aspect[j]) <= max_aspect_change)
    return representatives((i[ok], j[ok], d[ok]), rank, len(phash))


def clip_near_duplicates(
    image_emb: np.ndarray, rank: np.ndarray, threshold: float, *, exact_max_items: int = 20000,
    items_per_cluster: int = 1000, seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """(dup_of, cosine) per item for CLIP image embeddings at cosine >= ``threshold``."""
    pairs, _ = embedding_pairs(image_emb, rank, threshold, exact_max_items=exact_max_items,
                               items_per_cluster=items_per_cluster, seed=seed)
    if not len(pairs[0]):
        pairs = empty_pairs()
    i, j, s = pairs
    return representatives((np.r_[i, j], np.r_[j, i], np.r_[s, s]), rank, len(image_emb))
