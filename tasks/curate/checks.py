"""A filter's verdict as arrays: which items it drops, the score it judged on, and why."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Check:
    """``drop[i]``: the filter rejects item i, judged on ``score[i]``; ``detail`` is a format
    string over ``score`` (and ``limit``) for the human sentence in the decision row."""

    name: str  # the filter, for metrics and the "nothing survived" message
    reason: str  # the drop reason written to decisions
    drop: np.ndarray
    score: np.ndarray
    detail: str
    limit: float | None = None

    def sentence(self, i: int) -> str:
        return self.detail.format(score=float(self.score[i]), limit=self.limit)


def below(name: str, reason: str, values: np.ndarray, limit: float | None, detail: str) -> Check | None:
    """Drop where ``values < limit`` (nan never drops); None when the filter is off."""
    if limit is None:
        return None
    v = np.asarray(values, dtype=np.float64)
    return Check(name, reason, np.nan_to_num(v, nan=np.inf) < limit, v, detail, limit)


def above(name: str, reason: str, values: np.ndarray, limit: float | None, detail: str) -> Check | None:
    """Drop where ``values > limit`` (nan never drops); None when the filter is off."""
    if limit is None:
        return None
    v = np.asarray(values, dtype=np.float64)
    return Check(name, reason, np.nan_to_num(v, nan=-np.inf) > limit, v, detail, limit)
