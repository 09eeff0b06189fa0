"""The label stage's dataset folder as training samples: aspect-ratio buckets, augmentation and a
resumable batch order.

Input: a folder of images with kohya-style ``<name>.txt`` caption sidecars and a ``metadata.jsonl``
(``{"file_name", "text", "item_id"}`` per line), as the label stage writes it. ``metadata.jsonl``
is the source of truth; a folder without one (a hand-made kohya folder) is read from the image
files and their sidecars instead.

Each image gets a bucket (``training.buckets``) from its header alone, so a batch's bucket, SDXL
size/crop conditioning and cache keys are known before any pixel is decoded: an image whose
latents are cached is never opened. Images are scaled down to cover their bucket and centre
cropped; they are never scaled up. With bucketing off (``grid=None``) every image is a centre
square of ``resolution`` (the old behaviour): smaller images are then upscaled, and counted in
``upscaled`` so the trainer can warn.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from lora_factory.buckets import Bucket, assign_bucket
from lora_factory.errors import StageError

from .captions import augment_caption

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
METADATA_FILE = "metadata.jsonl"


@dataclass(frozen=True)
class Record:
    """One training example as listed in the dataset folder; ``sha256`` is of the file's bytes
    and keys its cached latents."""

    path: Path
    caption: str
    item_id: str
    sha256: str = ""


def read_records(dataset_dir: Path) -> list[Record]:
    """The folder's examples, in file order; ``StageError`` if there are none.

    Why a stable order: the seeded data order permutes indices, so the same folder and seed must
    give the same index → image mapping for a run to be reproducible.
    """
    dataset_dir = Path(dataset_dir)
    if not dataset_dir.is_dir():
        raise StageError(f"training dataset folder {dataset_dir} does not exist; run the label stage")
    meta = dataset_dir / METADATA_FILE
    records = _records_from_metadata(meta) if meta.is_file() else _records_from_sidecars(dataset_dir)
    if not records:
        raise StageError(
            f"training dataset folder {dataset_dir} has no images; "
            "check the crawl and curate reports for why every item was dropped"
        )
    return [Record(r.path, r.caption, r.item_id, hashlib.sha256(r.path.read_bytes()).hexdigest())
            for r in records]


def _records_from_metadata(meta: Path) -> list[Record]:
    records = []
    for lineno, line in enumerate(meta.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            path = meta.parent / row["file_name"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise StageError(f"{meta}:{lineno} is not a metadata row with a file_name ({e})") from e
        if not path.is_file():
            raise StageError(f"{meta}:{lineno} names {row['file_name']}, which is not in the folder")
        records.append(Record(path, str(row.get("text") or ""), str(row.get("item_id") or path.stem)))
    return records


def _records_from_sidecars(dataset_dir: Path) -> list[Record]:
    records = []
    for path in sorted(dataset_dir.iterdir()):
        if path.suffix.lower() not in IMAGE_SUFFIXES or not path.is_file():
            continue
        sidecar = path.with_suffix(".txt")
        caption = sidecar.read_text(encoding="utf-8").strip() if sidecar.is_file() else ""
        records.append(Record(path, caption, path.stem))
    return records


def load_rgb(path: Path) -> Image.Image:
    """The image as RGB, upright: phone photos store rotation in EXIF, not in the pixels."""
    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            return im.convert("RGB")
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as e:
        raise StageError(f"cannot read training image {path}: {e}") from e


def image_size(path: Path) -> tuple[int, int]:
    """(w, h) after EXIF rotation, read from the header only (no decode). An unreadable file
    fails here, before any model is loaded."""
    try:
        with Image.open(path) as im:
            w, h = im.size
            orientation = im.getexif().get(0x0112, 1)
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as e:
        raise StageError(f"cannot read training image {path}: {e}") from e
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


def cover_geometry(width: int, height: int, bucket: Bucket) -> tuple[tuple[int, int], tuple[int, int]]:
    """The resized (w, h) that covers ``bucket`` with the aspect ratio kept, and the centre
    crop's (top, left) in it."""
    scale = max(bucket.width / width, bucket.height / height)
    new_w = max(bucket.width, round(width * scale))
    new_h = max(bucket.height, round(height * scale))
    return (new_w, new_h), ((new_h - bucket.height) // 2, (new_w - bucket.width) // 2)


def to_tensor(image: Image.Image) -> torch.Tensor:
    """HWC uint8 → CHW float in [-1, 1], the range the VAE was trained on."""
    arr = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


@dataclass(frozen=True)
class Sample:
    """What a training step needs to know about one image before (or without) decoding it."""

    index: int
    record: Record
    bucket: Bucket
    flip: bool
    caption: str
    original_size: tuple[int, int]  # (h, w), upright
    crop_top_left: tuple[int, int]  # (top, left) in the resized (and flipped) image


class CaptionedImageDataset:
    """The training images with their captions and buckets.

    ``grid``: the bucket grid (``training.buckets.bucket_grid``); ``None`` puts every image in one
    ``resolution`` square bucket, upscaling smaller ones.
    """

    def __init__(self, dataset_dir: Path, resolution: int, records: list[Record] | None = None,
                 grid: list[Bucket] | None = None) -> None:
        self.dataset_dir = Path(dataset_dir)
        self.resolution = resolution
        self.records = read_records(self.dataset_dir) if records is None else list(records)
        self.sizes = [image_size(r.path) for r in self.records]
        square = Bucket(resolution, resolution)
        self.buckets = [square if grid is None else _bucket_for(r, w, h, grid)
                        for r, (w, h) in zip(self.records, self.sizes, strict=True)]
        self.upscaled = sum(1 for w, h in self.sizes if min(w, h) < resolution) if grid is None else 0

    def __len__(self) -> int:
        return len(self.records)

    def sample(self, index: int, flip: bool = False, caption: str | None = None) -> Sample:
        """The plan for one image: bucket, conditioning sizes and caption; no decoding."""
        rec, (w, h), bucket = self.records[index], self.sizes[index], self.buckets[index]
        (new_w, _), (top, left) = cover_geometry(w, h, bucket)
        if flip:
            left = new_w - left - bucket.width
        return Sample(index, rec, bucket, flip, rec.caption if caption is None else caption,
                      (h, w), (top, left))

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.sample(index)
        return {"pixel_values": load_pixels(sample), "caption": sample.caption,
                "item_id": sample.record.item_id, "original_size": sample.original_size,
                "crop_top_left": sample.crop_top_left, "bucket": sample.bucket}


def load_pixels(sample: Sample) -> torch.Tensor:
    """The sample's (3, H, W) float32 pixels in [-1, 1]: scaled to cover its bucket (down with
    Lanczos; up, bicubic, only without bucketing), flipped, centre-cropped."""
    image = load_rgb(sample.record.path)
    (new_w, new_h), _ = cover_geometry(image.width, image.height, sample.bucket)
    if (new_w, new_h) != image.size:
        down = new_w <= image.width
        image = image.resize((new_w, new_h), resample=Image.Resampling.LANCZOS if down
                             else Image.Resampling.BICUBIC)
    if sample.flip:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    top, left = sample.crop_top_left
    return to_tensor(image.crop((left, top, left + sample.bucket.width, top + sample.bucket.height)))


def _bucket_for(record: Record, width: int, height: int, grid: list[Bucket]) -> Bucket:
    try:
        return assign_bucket(width, height, grid)
    except StageError as e:
        raise StageError(f"training image {record.path.name}: {e}") from e


def collate(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack pixels; keep captions as a list; sizes as (B, 2) long tensors. A batch must come from
    one bucket: mixing sizes would need padding, which teaches borders."""
    buckets = {b.get("bucket") for b in batch}
    if len(buckets) > 1:
        raise ValueError(f"a batch mixes buckets {sorted(map(str, buckets))}")
    return {
        "pixel_values": torch.stack([b["pixel_values"] for b in batch]),
        "captions": [b["caption"] for b in batch],
        "item_ids": [b["item_id"] for b in batch],
        "original_sizes": torch.tensor([b["original_size"] for b in batch], dtype=torch.long),
        "crop_top_lefts": torch.tensor([b["crop_top_left"] for b in batch], dtype=torch.long),
    }


def split_records(records: list[Record], fraction: float, seed: int) -> tuple[list[Record], list[Record]]:
    """(train, validation): a seeded ``fraction`` held out (at least one image when > 0, and at
    least one left to train on). Which images are held out depends on the seed and the records
    only, so a resumed run validates on the same images."""
    if fraction <= 0 or len(records) < 2:
        return list(records), []
    n_val = min(len(records) - 1, max(1, round(len(records) * fraction)))
    perm = torch.randperm(len(records), generator=torch.Generator().manual_seed(seed + 7919)).tolist()
    held = set(perm[:n_val])
    return ([r for i, r in enumerate(records) if i not in held],
            [r for i, r in enumerate(records) if i in held])


def group_batches(indices: list[int], groups: list[Hashable], batch_size: int) -> list[list[int]]:
    """``indices`` grouped by ``groups[i]`` (first-seen group order, index order kept within a
    group), each group cut into batches of ``batch_size``; a group's last batch may be smaller."""
    by_group: dict[Hashable, list[int]] = {}
    for i in indices:
        by_group.setdefault(groups[i], []).append(i)
    return [members[k:k + batch_size] for members in by_group.values()
            for k in range(0, len(members), batch_size)]


@dataclass(frozen=True)
class Draw:
    """One slot of a batch: which example, and the seed of its augmentation (flip, caption)."""

    index: int
    aug_seed: int


class DataOrder:
    """Which examples each batch takes. Per epoch: every example ``repeats`` times in a seeded
    permutation, grouped by bucket (in permutation order), cut into batches of ``batch_size``
    (a bucket's last batch may be smaller), and the batches shuffled. Its whole state is
    (epoch, batch position), so a checkpoint stores where the run was in its epoch and a resumed
    run draws exactly the batches, and augmentations, an uninterrupted one would."""

    def __init__(self, groups: list[Hashable] | int, batch_size: int, seed: int, repeats: int = 1) -> None:
        self.groups = [0] * groups if isinstance(groups, int) else list(groups)
        self.batch_size, self.seed, self.repeats = batch_size, seed, repeats
        self.epoch, self.position = 0, 0
        self._batches: list[list[int]] | None = None

    @property
    def size(self) -> int:
        return len(self.groups)

    def _epoch_batches(self) -> list[list[int]]:
        if self._batches is None:
            gen = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            slots = [i for i in range(self.size) for _ in range(self.repeats)]
            order = [slots[j] for j in torch.randperm(len(slots), generator=gen).tolist()]
            batches = group_batches(order, self.groups, self.batch_size)
            self._batches = [batches[j] for j in torch.randperm(len(batches), generator=gen).tolist()]
        return self._batches

    def batches_per_epoch(self) -> int:
        return len(self._epoch_batches())

    def next_batch(self) -> list[Draw]:
        if self.position >= len(self._epoch_batches()):
            self.epoch, self.position, self._batches = self.epoch + 1, 0, None
        batch = self._epoch_batches()[self.position]
        base = ((self.seed * 1_000_003 + self.epoch) * 100_019 + self.position) * 1_009
        self.position += 1
        return [Draw(i, (base + slot) % 2**62) for slot, i in enumerate(batch)]

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.position, self._batches = state["epoch"], state["position"], None


def augment(dataset: CaptionedImageDataset, draw: Draw, *, random_flip: bool, caption_dropout: float,
            shuffle_tags: bool, keep_tokens: int) -> Sample:
    """The sample a draw trains on: flipped or not, with its augmented caption, decided by the
    draw's own seed (so the decision does not depend on what else is in the batch)."""
    rng = random.Random(draw.aug_seed)
    flip = random_flip and rng.random() < 0.5
    caption = augment_caption(dataset.records[draw.index].caption, rng, dropout=caption_dropout,
                              shuffle=shuffle_tags, keep_tokens=keep_tokens)
    return dataset.sample(draw.index, flip=flip, caption=caption)
