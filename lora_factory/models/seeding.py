"""Seeded weight initialisation that leaves the caller's random state alone.

Why: tiny models must be byte-identical for the same seed (so cached builds and test fixtures
agree), and building one must not shift the random stream of whatever code asked for it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run the block with torch's CPU generator seeded to ``seed``, then restore the old state."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield
