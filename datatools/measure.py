"""Measure one image file: everything the doctor's checks and scores need, from one decode.

Why per file and keyed by content: a dataset is inspected again after a few edits, and only the
edited files should be decoded and embedded again (``cache``). The pixel measures are curate's
(``features``: size after EXIF, blur, exposure, hashes); this adds the colour mode the file was
stored in, alpha, grayscale, a noise estimate and colour statistics.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from .features import DECODE_ERRORS, encode_quality, measure, pixel_hash

MEASURE_VERSION = 1
_SIDE = 256  # colour and noise statistics on a copy whose long side is at most this
SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
_GRAY_SPREAD = 4.0  # mean |channel - mean of channels| below this (0..255): a grey picture


@dataclass
class FileMeasure:
    """The measures of one file (``ok`` False: it could not be decoded, see ``error``)."""

    sha256: str
    ok: bool = False
    error: str = ""
    width: int = 0  # after EXIF orientation
    height: int = 0
    mode: str = ""  # PIL mode as stored: RGB, RGBA, P, CMYK, L, I;16...
    exif_rotated: bool = False
    has_alpha: bool = False  # some pixel is not fully opaque
    grayscale: bool = False
    encode_quality: float = 100.0
    laplacian_var: float = 0.0
    brightness: float = 0.0
    dark_fraction: float = 0.0
    bright_fraction: float = 0.0
    contrast: float = 0.0
    entropy: float = 0.0
    noise: float = 0.0  # Immerkær's sigma estimate on 0..255 luma
    saturation: float = 0.0  # mean HSV saturation 0..1
    mean_rgb: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    phash: str = ""  # hex
    dhash: str = ""
    pixel_sha256: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def noise_sigma(gray: np.ndarray) -> float:
    """Immerkær (1996) fast noise variance estimate: the Laplacian-difference kernel cancels
    edges of smooth images, what is left is noise; sigma in grey levels."""
    g = gray.astype(np.float64)
    if min(g.shape) < 3:
        return 0.0
    r = (g[:-2, :-2] - 2 * g[:-2, 1:-1] + g[:-2, 2:] - 2 * g[1:-1, :-2] + 4 * g[1:-1, 1:-1]
         - 2 * g[1:-1, 2:] + g[2:, :-2] - 2 * g[2:, 1:-1] + g[2:, 2:])
    return float(np.sqrt(np.pi / 2) * np.abs(r).mean() / 6.0)


def _colour(img: Image.Image) -> tuple[bool, float, list[float], float]:
    """(grayscale, saturation, mean RGB, noise) of a small RGB copy."""
    small = img.convert("RGB")
    small.thumbnail((_SIDE, _SIDE), Image.Resampling.BOX)
    rgb = np.asarray(small, dtype=np.float64)
    spread = float(np.abs(rgb - rgb.mean(axis=2, keepdims=True)).mean())
    hsv = np.asarray(small.convert("HSV"), dtype=np.float64)
    gray = np.asarray(small.convert("L"))
    return spread < _GRAY_SPREAD, float(hsv[..., 1].mean() / 255.0), rgb.reshape(-1, 3).mean(axis=0).tolist(), noise_sigma(gray)


def _alpha(img: Image.Image) -> bool:
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        return bool(np.asarray(img.convert("RGBA"))[..., 3].min() < 255)
    return False


def to_rgb(img: Image.Image) -> Image.Image:
    """8-bit RGB: 16-bit scaled down, palette and CMYK converted, transparency flattened on white."""
    if img.mode in SIXTEEN_BIT:
        a = np.asarray(img, dtype=np.float64)
        img = Image.fromarray(np.clip(a / (65535.0 if a.max() > 255 else 255.0) * 255.0, 0, 255).astype(np.uint8), "L")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


def measure_file(path: Path, sha256: str | None = None) -> tuple[FileMeasure, Image.Image | None]:
    """The measures of ``path`` and its decoded, oriented RGB picture (None if undecodable)."""
    from PIL import ImageOps

    fm = FileMeasure(sha256 or file_sha256(path))
    try:
        with Image.open(path) as im:
            fm.mode = im.mode
            fm.encode_quality = encode_quality(im)
            fm.exif_rotated = im.getexif().get(0x0112, 1) not in (1, None)
            fm.has_alpha = _alpha(im)
            img = ImageOps.exif_transpose(im)
            img.load()
    except DECODE_ERRORS as e:
        fm.error = f"cannot decode: {e}"
        return fm, None
    fm.ok = True
    img = to_rgb(img)  # 16-bit, palette, CMYK and alpha measured as they will train
    fm.width, fm.height = img.size
    m = measure(img)
    for k in ("laplacian_var", "brightness", "dark_fraction", "bright_fraction", "contrast", "entropy"):
        setattr(fm, k, float(m[k]))  # type: ignore[arg-type]
    fm.phash, fm.dhash = bytes(m["phash"]).hex(), bytes(m["dhash"]).hex()  # type: ignore[arg-type]
    fm.grayscale, fm.saturation, fm.mean_rgb, fm.noise = _colour(img)
    fm.pixel_sha256 = pixel_hash(img)
    return fm, img
