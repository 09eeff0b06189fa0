"""Duplicate resolution shared by every dedup filter: similar pairs -> one representative each.

The rule (SemDeDup's): items are ranked best-first; an item is a duplicate when some
better-ranked item is similar to it, and its ``dup_of`` is the best-ranked such item, followed
to the group's kept representative. Everything is array code: pairs come from matrix products,
binary-hash range search or k-means buckets, never from a Python loop over pairs.
"""

from __future__ import annotations

import numpy as np

Pairs = tuple[np.ndarray, np.ndarray, np.ndarray]  # (item i, better-ranked j, similarity)


def empty_pairs() -> Pairs:
    return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)


def representatives(pairs: Pairs, rank: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(dup_of, score): for each item the best-ranked better item it pairs with (-1: none), and
    that pair's similarity (nan: none). Pairs whose j is not better-ranked than i are ignored."""
    i, j, s = pairs
    keep = rank[j] < rank[i]
    i, j, s = i[keep], j[keep], s[keep]
    dup_of = np.full(n, -1, np.int64)
    score = np.full(n, np.nan)
    if len(i):
        order = np.lexsort((rank[j], i))  # by i, then best-ranked j first
        i, j, s = i[order], j[order], s[order]
        first = np.unique(i, return_index=True)[1]
        dup_of[i[first]] = j[first]
        score[i[first]] = s[first]
    return resolve_chains(dup_of), score


def resolve_chains(dup_of: np.ndarray) -> np.ndarray:
    """Point every duplicate at the root of its chain (pointer jumping, O(n log depth))."""
    d = dup_of.copy()
    has = d >= 0
    while True:
        nxt = d.copy()
        nxt[has] = np.where(d[d[has]] >= 0, d[d[has]], d[has])
        if np.array_equal(nxt, d):
            return d
        d = nxt


def _block_pairs(e: np.ndarray, threshold: float, max_elems: int = 1 << 24) -> Pairs:
    """Pairs (i, j<i, cos) with cos >= threshold among rows of ``e`` (already ranked best-first):
    blockwise lower-triangle matrix products, memory bounded by ``max_elems`` floats per block."""
    n = len(e)
    out_i, out_j, out_s = [], [], []
    start = 0
    while start < n:
        # Rows [start, stop) against columns [0, stop): b * stop <= max_elems.
        b = max(1, min(n - start, max_elems // max(start + 1, 1)))
        stop = start + b
        sims = e[start:stop] @ e[:stop].T
        rows = np.arange(start, stop)[:, None]
        sims[rows <= np.arange(stop)[None, :]] = -np.inf
        r, c = np.nonzero(sims >= threshold)
        if len(r):
            out_i.append(r + start)
            out_j.append(c)
            out_s.append(sims[r, c])
        start = stop
    if not out_i:
        return empty_pairs()
    return (np.concatenate(out_i).astype(np.int64), np.concatenate(out_j).astype(np.int64),
            np.concatenate(out_s).astype(np.float32))


def embedding_pairs(
    emb: np.ndarray,
    rank: np.ndarray,
    threshold: float,
    *,
    exact_max_items: int = 20000,
    items_per_cluster: int = 1000,
    seed: int = 0,
) -> tuple[Pairs, str]:
    """Similar pairs of L2-normalised embeddings at cosine >= ``threshold``, and the method used.

    Up to ``exact_max_items`` rows: every pair is compared (blockwise). Above: SemDeDup's
    cluster-then-compare, spherical k-means (faiss) into ``n / items_per_cluster`` buckets and
    every pair compared inside each bucket; pairs split across buckets are missed, the price of
    near-linear cost (measured in ``bench/curate.py``).
    """
    n = len(emb)
    if n < 2:
        return empty_pairs(), "exact"
    emb = np.ascontiguousarray(emb, dtype=np.float32)
    if n <= exact_max_items:
        order = np.argsort(rank, kind="stable")
        i, j, s = _block_pairs(emb[order], threshold)
        return (order[i], order[j], s), "exact"
    import faiss

    k = max(2, n // items_per_cluster)
    km = faiss.Kmeans(emb.shape[1], k, niter=10, seed=seed, spherical=True, max_points_per_centroid=64)
    km.train(emb[np.argsort(rank, kind="stable")])  # in rank order: the same clusters whatever the input order
    _, assign = km.index.search(emb, 1)
    cluster = assign[:, 0]
    order = np.lexsort((rank, cluster))  # by cluster, best-ranked first inside
    bounds = np.flatnonzero(np.diff(cluster[order])) + 1
    out_i, out_j, out_s = [], [], []
    for members in np.split(order, bounds):
        if len(members) < 2:
            continue
        i, j, s = _block_pairs(emb[members], threshold)
        if len(i):
            out_i.append(members[i])
            out_j.append(members[j])
            out_s.append(s)
    if not out_i:
        return empty_pairs(), f"semdedup(k={k})"
    return (np.concatenate(out_i), np.concatenate(out_j), np.concatenate(out_s)), f"semdedup(k={k})"


def hash_pairs(bits: np.ndarray, max_distance: int) -> Pairs:
    """Pairs (i, j) of packed binary hashes within ``max_distance`` Hamming bits (faiss range
    search on a flat binary index); similarity is the distance, both directions included."""
    import faiss

    n = len(bits)
    if n < 2:
        return empty_pairs()
    index = faiss.IndexBinaryFlat(bits.shape[1] * 8)
    codes = np.ascontiguousarray(bits, dtype=np.uint8)
    index.add(codes)
    lims, dist, ids = index.range_search(codes, max_distance + 1)  # faiss: distance < radius
    i = np.repeat(np.arange(n), np.diff(lims.astype(np.int64)))
    keep = ids != i
    return i[keep].astype(np.int64), ids[keep].astype(np.int64), dist[keep].astype(np.float32)


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise Hamming distances of packed hashes ``a[k]`` vs ``b[k]``."""
    return np.unpackbits(np.bitwise_xor(a, b), axis=1).sum(axis=1)
