"""Read a LoRA training folder in the layouts people ship: kohya, HF imagefolder, flat, or a zip.

- kohya (sd-scripts): ``<root>/<N>_<name>/`` subfolders, ``N`` the repeats, each image with a
  ``.txt`` (or ``.caption``) sidecar of the same stem;
- imagefolder (datasets/diffusers): ``metadata.jsonl`` rows ``{"file_name": ..., "text": ...}``;
- flat: images anywhere below the root, sidecars as in kohya, repeats 1;
- a ``.zip`` of any of these, unpacked with ``safezip`` into a scratch folder first.

Junk that archivers and desktops leave (``__MACOSX/``, ``._*``, ``.DS_Store``, ``Thumbs.db``)
is listed, never read as data; symlinks are listed and not followed.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from lora_factory.errors import DatasetError

from .safezip import ZipLimits, extract_zip

IMAGE_EXTS = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
CAPTION_EXTS = (".txt", ".caption")
METADATA = "metadata.jsonl"
CAPTION_KEYS = ("text", "caption", "prompt")
_JUNK_NAMES = frozenset({".ds_store", "thumbs.db", "desktop.ini"})
_KOHYA_DIR = re.compile(r"^(\d+)_(.+)$")


@dataclass(frozen=True)
class Sample:
    """One training image and what goes with it."""

    path: Path
    rel: str  # posix path relative to the dataset root: the name users see
    caption: str | None  # None: no caption at all; "" an empty one
    caption_rel: str | None  # the sidecar file (or metadata.jsonl) the caption came from
    repeats: int = 1
    concept: str = ""  # the kohya folder's name part


@dataclass
class Dataset:
    root: Path
    layout: str  # kohya | imagefolder | flat
    samples: list[Sample]
    junk: list[str] = field(default_factory=list)
    symlinks: list[str] = field(default_factory=list)
    source: str = ""  # what the user gave: the folder or the zip


def is_junk(rel: str) -> bool:
    parts = rel.split("/")
    return "__MACOSX" in parts or parts[-1].startswith("._") or parts[-1].lower() in _JUNK_NAMES


def read_dataset(path: Path, scratch: Path | None = None, limits: ZipLimits | None = None) -> Dataset:
    """The dataset at ``path`` (a folder, or a zip unpacked under ``scratch``)."""
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"dataset {path} does not exist: give a folder or a .zip of images")
    if path.is_file():
        if path.suffix.lower() != ".zip":
            raise DatasetError(f"dataset {path} is a file but not a .zip: give a folder or a zip of images")
        if scratch is None:
            raise DatasetError("a zip dataset needs a scratch folder to unpack into")
        ds = read_folder(extract_zip(path, scratch / path.stem, limits))
    else:
        ds = read_folder(path)
    ds.source = str(path)
    if not ds.samples:
        raise DatasetError(f"dataset {path} holds no images ({', '.join(sorted(IMAGE_EXTS))}): "
                           "point at the folder that contains them")
    return ds


def _walk(root: Path) -> tuple[list[str], list[str], list[str]]:
    """(files, junk, symlinks) as sorted posix paths relative to ``root``; symlinks not followed."""
    files, junk, links = [], [], []
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_symlink():
            links.append(rel)
        elif is_junk(rel):
            if p.is_file() or rel.endswith("__MACOSX"):
                junk.append(rel)
        elif p.is_file():  # rglob does not descend into symlinked folders
            files.append(rel)
    return files, junk, links


def read_folder(root: Path) -> Dataset:
    files, junk, links = _walk(root)
    if METADATA in files:
        return Dataset(root, "imagefolder", _imagefolder(root), junk, links)
    kohya = {rel.split("/")[0] for rel in files if "/" in rel and _KOHYA_DIR.match(rel.split("/")[0])}
    layout = "kohya" if kohya else "flat"
    present = set(files)
    samples = []
    for rel in files:
        if Path(rel).suffix.lower() not in IMAGE_EXTS:
            continue
        top = rel.split("/")[0] if "/" in rel else ""
        m = _KOHYA_DIR.match(top)
        caption, caption_rel = _sidecar(root, rel, present)
        samples.append(Sample(root / rel, rel, caption, caption_rel,
                              repeats=max(1, int(m.group(1))) if m else 1, concept=m.group(2) if m else ""))
    return Dataset(root, layout, samples, junk, links)


def _sidecar(root: Path, rel: str, present: set[str]) -> tuple[str | None, str | None]:
    stem = rel[: -len(Path(rel).suffix)]
    for ext in CAPTION_EXTS:
        if stem + ext in present:
            return read_caption(root / (stem + ext)), stem + ext
    return None, None


def read_caption(path: Path) -> str:
    """A sidecar's text, one line (sd-scripts joins lines); undecodable bytes replaced."""
    return " ".join(path.read_bytes().decode("utf-8", errors="replace").split())


def _imagefolder(root: Path) -> list[Sample]:
    samples = []
    for n, line in enumerate((root / METADATA).read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            rel = str(row["file_name"]).replace("\\", "/")
        except (ValueError, KeyError, TypeError):
            raise DatasetError(f"{root / METADATA} line {n} is not a JSON object with a file_name: fix or remove it") from None
        if rel.startswith("/") or ".." in rel.split("/"):
            raise DatasetError(f"{root / METADATA} line {n}: file_name {rel!r} points outside the folder")
        text = next((row[k] for k in CAPTION_KEYS if isinstance(row.get(k), str)), None)
        samples.append(Sample(root / rel, rel, None if text is None else " ".join(text.split()),
                              METADATA if text is not None else None))
    return samples
