"""The label stage's dataset folder as a torch ``Dataset`` of fixed-size training samples.

Input: a folder of images with kohya-style ``<name>.txt`` caption sidecars and a ``metadata.jsonl``
(``{"file_name", "text", "item_id"}`` per line), as the label stage writes it. ``metadata.jsonl``
is the source of truth; a folder without one (a hand-made kohya folder) is read from the image
files and their sidecars instead.

Every sample has the same square shape (``resolution`` x ``resolution``) so batches stack: the
image's shorter side is resized to ``resolution`` and the centre is cropped. Images whose shorter
side is *below* ``resolution`` are therefore upscaled (bicubic) rather than padded or dropped:
padding would teach the model black borders, and dropping here would silently disagree with the
curate stage, which is where ``too_small`` images are rejected (``curate.min_side``). The count
of upscaled images is kept in ``Dataset.upscaled`` so the trainer can warn about it. Aspect-ratio
bucketing replaces the centre crop later; ``original_size`` and ``crop_top_left`` are returned
already because SDXL conditions on them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch.utils.data import Dataset

from lora_factory.errors import StageError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
METADATA_FILE = "metadata.jsonl"


@dataclass(frozen=True)
class Record:
    """One training example as listed in the dataset folder."""

    path: Path
    caption: str
    item_id: str


def read_records(dataset_dir: Path) -> list[Record]:
    """The folder's examples, in file order; ``StageError`` if there are none.

    Why a stable order: the DataLoader's seeded shuffle permutes indices, so the same folder and
    seed must give the same index → image mapping for a run to be reproducible.
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
    return records


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


def resize_and_center_crop(image: Image.Image, resolution: int) -> tuple[Image.Image, tuple[int, int]]:
    """Shorter side to ``resolution`` (down with Lanczos, up with bicubic), then a centre square.

    Returns the crop and its top-left corner in the resized image (SDXL's ``crops_coords_top_left``).
    """
    w, h = image.size
    scale = resolution / min(w, h)
    new_w, new_h = max(resolution, round(w * scale)), max(resolution, round(h * scale))
    resample = Image.Resampling.LANCZOS if scale < 1 else Image.Resampling.BICUBIC
    if (new_w, new_h) != (w, h):
        image = image.resize((new_w, new_h), resample=resample)
    left, top = (new_w - resolution) // 2, (new_h - resolution) // 2
    return image.crop((left, top, left + resolution, top + resolution)), (top, left)


def to_tensor(image: Image.Image) -> torch.Tensor:
    """HWC uint8 → CHW float in [-1, 1], the range the VAE was trained on."""
    arr = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


class CaptionedImageDataset(Dataset):
    """Square ``resolution`` crops of the dataset folder's images with their captions.

    Each item is a dict: ``pixel_values`` (3, R, R) float32 in [-1, 1], ``caption``, ``item_id``,
    ``original_size`` (h, w) and ``crop_top_left`` (top, left) — the last two for SDXL.
    """

    def __init__(self, dataset_dir: Path, resolution: int, records: list[Record] | None = None) -> None:
        self.dataset_dir = Path(dataset_dir)
        self.resolution = resolution
        self.records = read_records(self.dataset_dir) if records is None else list(records)
        self.upscaled = sum(1 for r in self.records if min(_size(r.path)) < resolution)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        rec = self.records[index]
        image = load_rgb(rec.path)
        crop, top_left = resize_and_center_crop(image, self.resolution)
        return {
            "pixel_values": to_tensor(crop),
            "caption": rec.caption,
            "item_id": rec.item_id,
            "original_size": (image.height, image.width),
            "crop_top_left": top_left,
        }


def _size(path: Path) -> tuple[int, int]:
    """(w, h) after EXIF rotation, read from the header only (no decode). An unreadable file
    fails here, before any model is loaded."""
    try:
        with Image.open(path) as im:
            w, h = im.size
            orientation = im.getexif().get(0x0112, 1)
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as e:
        raise StageError(f"cannot read training image {path}: {e}") from e
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


def collate(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack pixels; keep captions as a list; sizes as (B, 2) long tensors."""
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


class DataOrder:
    """Which examples each batch takes: a seeded permutation per epoch, cut into batches (the last
    one may be smaller). Its whole state is (epoch, position), so a checkpoint can store where the
    run was in its epoch and a resumed run draws exactly the batches an uninterrupted one would."""

    def __init__(self, size: int, batch_size: int, seed: int) -> None:
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.epoch, self.position = 0, 0
        self._perm: list[int] | None = None

    def _permutation(self) -> list[int]:
        if self._perm is None:
            gen = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            self._perm = torch.randperm(self.size, generator=gen).tolist()
        return self._perm

    def next_batch(self) -> list[int]:
        if self.position >= self.size:
            self.epoch, self.position, self._perm = self.epoch + 1, 0, None
        batch = self._permutation()[self.position:self.position + self.batch_size]
        self.position += len(batch)
        return batch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.position, self._perm = state["epoch"], state["position"], None
