"""Balance: cap near-identical compositions and any one source's share of the dataset.

Why: twenty framings of the same lighthouse teach the LoRA one picture, and one prolific site
teaches it that site's style. Both caps keep the best-ranked items of each group.
"""

from __future__ import annotations

import math
from urllib.parse import urlparse

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from datatools.dedup import hash_pairs


def _beyond_cap(groups: np.ndarray, rank: np.ndarray, cap: int) -> tuple[np.ndarray, np.ndarray]:
    """(over, position): items past the ``cap`` best-ranked of their group, and each item's
    0-based position inside its group."""
    order = np.lexsort((rank, groups))
    g = groups[order]
    starts = np.r_[0, np.flatnonzero(g[1:] != g[:-1]) + 1]
    pos_sorted = np.arange(len(g)) - np.repeat(starts, np.diff(np.r_[starts, len(g)]))
    pos = np.empty(len(g), np.int64)
    pos[order] = pos_sorted
    return pos >= cap, pos


def composition_groups(phash: np.ndarray, max_distance: int) -> np.ndarray:
    """Connected components of the "pHash within ``max_distance``" graph (aspect-agnostic)."""
    n = len(phash)
    i, j, _ = hash_pairs(phash, max_distance)
    graph = coo_matrix((np.ones(len(i), np.int8), (i, j)), shape=(n, n))
    return connected_components(graph, directed=False)[1]


def composition_cap(phash: np.ndarray, rank: np.ndarray, cap: int, max_distance: int) -> tuple[np.ndarray, np.ndarray]:
    """(drop, group size) per item: beyond the ``cap`` best of each near-identical composition."""
    groups = composition_groups(phash, max_distance)
    over, _ = _beyond_cap(groups, rank, cap)
    sizes = np.bincount(groups)[groups]
    return over, sizes.astype(np.float64)


def source_of(page_url: str) -> str:
    host = (urlparse(page_url).hostname or "").lower()
    return host[4:] if host.startswith("www.") else host


def source_cap(sources: list[str], rank: np.ndarray, max_share: float) -> tuple[np.ndarray, np.ndarray]:
    """(drop, source share) per item: each source keeps at most ``ceil(max_share * n)`` items.
    With a single source there is nothing to balance against, so nothing is dropped."""
    n = len(sources)
    names, groups = np.unique(np.array(sources, dtype=str), return_inverse=True)
    share = np.bincount(groups)[groups] / max(n, 1)
    if len(names) < 2:
        return np.zeros(n, bool), share
    over, _ = _beyond_cap(groups, rank, max(1, math.ceil(max_share * n)))
    return over, share
