"""Curation's per-item work as a plain, picklable batch function for ``lora_factory.scaleout``:
paths in, pixel measures and CLIP rows out; the worker loads CLIP once and keeps it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from datatools.features import ImageFeatures
from lora_factory.scaleout import cached_model


@dataclass(frozen=True)
class MeasureBatch:
    paths: list[str]
    exact: bool  # pixel hashes for exact dedup
    clip_ref: str | None  # None: no CLIP embeddings
    cache_dir: str
    clip_batch_size: int


def measure_batch(batch: MeasureBatch) -> tuple[ImageFeatures, np.ndarray | None]:
    """Decode, measure, hash and embed one batch of image files (rows in the batch's order)."""
    from lora_factory.models import load_clip_scorer

    from .stage import measure_files

    clip = cached_model(load_clip_scorer, batch.clip_ref, batch.cache_dir) if batch.clip_ref else None
    return measure_files([Path(p) for p in batch.paths], batch.exact, clip, batch.clip_batch_size)
