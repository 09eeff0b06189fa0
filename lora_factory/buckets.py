"""Aspect-ratio buckets: every image trains at a size close to its own shape, never upscaled.

Why: a centre square crop cuts the heads off portraits and the ends off landscapes, and teaches
the model that subjects are always centred in a square. Bucketing (NovelAI's scheme, as in kohya's
sd-scripts) gives each image the bucket whose aspect ratio is closest to its own, from a grid of
sizes that are multiples of ``step`` pixels and hold at most ``resolution²`` pixels.

No upscaling: an image only goes to a bucket it covers after a *down*-scale (bucket width ≤ image
width and bucket height ≤ image height), so a small image gets a smaller bucket instead of being
blown up into blur. A batch always takes its images from one bucket, so tensors stack without
padding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .errors import StageError


@dataclass(frozen=True, order=True)
class Bucket:
    """A training size in pixels."""

    width: int
    height: int

    @property
    def area(self) -> int:
        return self.width * self.height

    def __str__(self) -> str:
        return f"{self.width}x{self.height}"


def bucket_grid(resolution: int, step: int, min_side: int | None = None,
                max_side: int | None = None) -> list[Bucket]:
    """Every (w, h) on the ``step`` grid with ``min_side ≤ w, h ≤ max_side`` and
    ``w·h ≤ resolution²``. Defaults: sides from ``step`` to ``2·resolution``."""
    if step <= 0 or resolution < step:
        raise StageError(f"train.resolution {resolution} must be at least the bucket step {step}")
    lo = max(step, min_side or step)
    hi = max_side or 2 * resolution
    sides = range(_ceil_to(lo, step), hi + 1, step)
    grid = [Bucket(w, h) for w in sides for h in sides if w * h <= resolution * resolution]
    if not grid:
        raise StageError(f"no bucket fits train.resolution {resolution} with sides {lo}..{hi} "
                         f"in steps of {step}; widen train.min_bucket_side / train.max_bucket_side")
    return sorted(grid)


def crop_fraction(width: int, height: int, bucket: Bucket) -> float:
    """The share of the image lost when it is scaled to cover ``bucket`` and centre-cropped."""
    scale = max(bucket.width / width, bucket.height / height)
    return 1.0 - bucket.area / (width * scale * height * scale)


def bucket_score(width: int, height: int, bucket: Bucket) -> float:
    """How good ``bucket`` is for the image: the pixels it trains on, discounted by the square
    of the share of the image its crop keeps. A perfect aspect match at a quarter of the pixels
    loses to a 10 % crop at the full budget; a 30 % crop needs twice the pixels to win."""
    return bucket.area * (1.0 - crop_fraction(width, height, bucket)) ** 2


def assign_bucket(width: int, height: int, grid: list[Bucket]) -> Bucket:
    """The bucket for a ``width`` x ``height`` image: the best-scoring (``bucket_score``) among
    those it covers without upscaling."""
    fitting = [b for b in grid if b.width <= width and b.height <= height]
    if not fitting:
        smallest = min(grid, key=lambda b: b.area)
        raise StageError(f"a {width}x{height} image is smaller than the smallest bucket {smallest}; "
                         "lower train.min_bucket_side or raise curate.min_side to drop such images")
    return max(fitting, key=lambda b: (bucket_score(width, height, b),
                                       -abs(math.log(b.width / b.height * height / width))))


def _ceil_to(value: int, step: int) -> int:
    return -(-value // step) * step
