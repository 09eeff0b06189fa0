"""Everything the doctor knows about a dataset once it is measured, as arrays row-aligned with
the samples: the one input of the checks (``findings``) and the scores (``scores``)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from lora_factory.buckets import Bucket, assign_bucket, bucket_grid
from lora_factory.errors import StageError

from .captions import TokenBudget, trigger_count
from .embedmap import kmeans, n_clusters, outliers, pca_2d
from .image_dedup import exact_duplicates, hash_near_duplicates
from .measure import FileMeasure
from .readers import Dataset

if TYPE_CHECKING:
    from lora_factory.config import DoctorConfig


DEFAULT_BUCKET_STEP = 64  # train.bucket_step unset: SD1.5's latent grid (the doctor loads no model)


@dataclass(frozen=True)
class Settings:
    """What the checks compare against: the doctor's thresholds and the training it feeds."""

    doctor: DoctorConfig
    resolution: int = 512
    bucket_step: int = DEFAULT_BUCKET_STEP
    batch_size: int = 1
    trigger: str | None = None


@dataclass
class Facts:
    ds: Dataset
    m: list[FileMeasure]
    emb: np.ndarray  # (n, d) L2-normalised CLIP image embeddings, zero rows where not ok
    concept_cos: np.ndarray  # CLIP image-concept cosine, nan where not ok
    budget: TokenBudget
    s: Settings
    ok: np.ndarray = None  # type: ignore[assignment]
    exact_of: np.ndarray = None  # type: ignore[assignment]  # index of the kept copy, -1: none
    near_of: np.ndarray = None  # type: ignore[assignment]
    cluster: np.ndarray = None  # type: ignore[assignment]  # -1 where not ok
    xy: np.ndarray = None  # type: ignore[assignment]
    outlier: np.ndarray = None  # type: ignore[assignment]
    tokens: list[int | None] = None  # type: ignore[assignment]
    triggers: list[int | None] = None  # type: ignore[assignment]
    bucket: list[str | None] = None  # type: ignore[assignment]

    @property
    def n(self) -> int:
        return len(self.m)

    def rel(self, idx: np.ndarray | list[int]) -> list[str]:
        return [self.ds.samples[i].rel for i in idx]


def derive(f: Facts) -> Facts:
    """Fill in the derived columns: duplicates, clusters, map, outliers, tokens, buckets."""
    f.ok = np.array([x.ok for x in f.m], bool)
    _duplicates(f)
    idx = np.flatnonzero(f.ok)
    f.cluster = np.full(f.n, -1, np.int64)
    f.xy = np.full((f.n, 2), 0.5)
    f.outlier = np.zeros(f.n, bool)
    if len(idx):
        e = f.emb[idx]
        f.cluster[idx], _ = kmeans(e, n_clusters(len(idx)))
        f.xy[idx] = pca_2d(e)
        unique = f.exact_of[idx] < 0  # copies would make each other look normal
        mask, _ = outliers(e[unique], f.s.doctor.outlier_z, f.s.doctor.outlier_min_gap)
        f.outlier[idx[unique]] = mask
    caps = [s.caption for s in f.ds.samples]
    f.tokens = [f.budget.count(c) if c else None for c in caps]
    f.triggers = [trigger_count(c, f.s.trigger) if c is not None and f.s.trigger else None for c in caps]
    f.bucket = _buckets(f)
    return f


def _rank(f: Facts) -> np.ndarray:
    """Best copy first: more pixels, then better encoding, then sharper, then name."""
    keys = [(-(x.width * x.height), -x.encode_quality, -x.laplacian_var, s.rel) for x, s in zip(f.m, f.ds.samples, strict=True)]
    order = sorted(range(f.n), key=lambda i: keys[i])
    rank = np.empty(f.n, np.int64)
    rank[order] = np.arange(f.n)
    return rank


def _duplicates(f: Facts) -> None:
    rank = _rank(f)
    f.exact_of = np.full(f.n, -1, np.int64)
    f.near_of = np.full(f.n, -1, np.int64)
    idx = np.flatnonzero(f.ok)
    if len(idx) < 2:
        return
    f.exact_of[idx] = _map(idx, exact_duplicates([f.m[i].pixel_sha256 for i in idx], rank[idx]))
    keep = idx[f.exact_of[idx] < 0]
    if len(keep) < 2:
        return
    ph = np.stack([np.frombuffer(bytes.fromhex(f.m[i].phash), np.uint8) for i in keep])
    dh = np.stack([np.frombuffer(bytes.fromhex(f.m[i].dhash), np.uint8) for i in keep])
    aspect = np.array([math.log(f.m[i].width / max(f.m[i].height, 1)) for i in keep])
    d = f.s.doctor
    near, _ = hash_near_duplicates(ph, dh, aspect, rank[keep], max_phash=d.near_dup_max_phash,
                                   max_dhash=d.near_dup_max_dhash, max_aspect_change=0.1)
    f.near_of[keep] = _map(keep, near)


def _map(idx: np.ndarray, local_of: np.ndarray) -> np.ndarray:
    """Local dup_of indices (into ``idx``) back to dataset rows."""
    return np.where(local_of >= 0, idx[np.maximum(local_of, 0)], -1)


def _buckets(f: Facts) -> list[str | None]:
    try:
        grid = bucket_grid(f.s.resolution, f.s.bucket_step)
    except StageError:
        return [None] * f.n
    return bucket_names([(x.width, x.height) if x.ok else None for x in f.m], grid)


def bucket_names(sizes: list[tuple[int, int] | None], grid: list[Bucket]) -> list[str | None]:
    """Each image's training bucket (``"512x384"``) on ``grid``; None for an unreadable image or
    one smaller than every bucket (below_resolution says so)."""
    out: list[str | None] = []
    for size in sizes:
        try:
            out.append(str(assign_bucket(*size, grid)) if size else None)
        except StageError:
            out.append(None)
    return out
