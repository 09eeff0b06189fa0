"""Labelling's per-image model work as plain, picklable batch functions for
``lora_factory.scaleout``: paths in, captions or CLIP rows out; each worker loads a model once."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lora_factory.scaleout import Mapper, aligned_size, cached_model, chunks

RERANK_BATCH = 32  # images per CLIP call when re-ranking (in process too)


@dataclass(frozen=True)
class ModelBatch:
    paths: list[str]
    ref: str  # the model reference (models.captioner or models.clip_scorer)
    cache_dir: str
    batch_size: int
    max_new_tokens: int = 0  # captions only


def caption_batch(batch: ModelBatch) -> list[str]:
    from lora_factory.models import load_captioner

    from .captioning import captioner_captions

    captioner = cached_model(load_captioner, batch.ref, batch.cache_dir)
    return captioner_captions([Path(p) for p in batch.paths], captioner, batch.batch_size, batch.max_new_tokens)


def embed_batch(batch: ModelBatch) -> np.ndarray:
    from lora_factory.models import load_clip_scorer

    from .stage import embed_image_files

    clip = cached_model(load_clip_scorer, batch.ref, batch.cache_dir)
    return embed_image_files(clip, [Path(p) for p in batch.paths], batch.batch_size)


@dataclass
class LabelBatches:
    """Where label's model batches go (``runtime.executor: dask``) and what the workers load."""

    map_batches: Mapper
    captioner_ref: str
    clip_ref: str
    cache_dir: Path
    batch_items: int

    def specs(self, paths: list[Path], ref: str, batch_size: int, max_new_tokens: int = 0) -> list[ModelBatch]:
        size = aligned_size(self.batch_items, batch_size)
        return [ModelBatch([str(paths[i]) for i in r], ref, str(self.cache_dir), batch_size, max_new_tokens)
                for r in chunks(len(paths), size)]

    def captions(self, paths: list[Path], batch_size: int, max_new_tokens: int) -> list[str]:
        parts = self.map_batches(caption_batch, self.specs(paths, self.captioner_ref, batch_size, max_new_tokens))
        return [c for part in parts for c in part]

    def image_embeddings(self, paths: list[Path]) -> np.ndarray:
        parts = self.map_batches(embed_batch, self.specs(paths, self.clip_ref, RERANK_BATCH))
        return np.concatenate(parts) if parts else np.zeros((0, 1), np.float32)
