"""Decode each image once and measure it: size, sharpness, exposure, information, hashes.

Why one pass: at millions of images the decode is the cost, so everything the pixel-based filters
need (and the CLIP input tensor, see ``clip.py``) comes from the same decoded picture. Every
measure is taken after EXIF orientation is applied, so width/height are what a trainer sees.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from scipy.fft import dctn

# Sharpness and exposure are measured on a grey copy whose long side is at most this: comparable
# across resolutions, and cheap at any input size.
ANALYSIS_SIDE = 512
HASH_BYTES = 8  # 64-bit perceptual hashes


@dataclass
class ImageFeatures:
    """Per-item measures as column arrays (row i is item i); ``ok`` is False for undecodable files."""

    ok: np.ndarray  # bool
    error: list[str | None]
    width: np.ndarray  # int32, after EXIF orientation
    height: np.ndarray
    exif_rotated: np.ndarray  # bool: EXIF orientation changed the pixels
    encode_quality: np.ndarray  # float: estimated JPEG quality, 100 for lossless
    laplacian_var: np.ndarray  # float64: variance of the Laplacian (blur)
    brightness: np.ndarray  # mean luma 0..255
    dark_fraction: np.ndarray  # share of pixels with luma < 16
    bright_fraction: np.ndarray  # share of pixels with luma > 239
    contrast: np.ndarray  # std of luma
    entropy: np.ndarray  # bits, histogram entropy of luma (0..8)
    phash: np.ndarray  # uint8 (n, 8)
    dhash: np.ndarray  # uint8 (n, 8)
    pixel_sha256: list[str | None]

    @property
    def n(self) -> int:
        return len(self.ok)


# IJG's standard luminance quantisation table (quality 50), for estimating a JPEG's quality.
_STD_LUMA_MEAN = 57.625


def encode_quality(im: Image.Image) -> float:
    """Estimated JPEG quality (1-100) from its luminance quantisation table; 100 for lossless
    formats. Why: a recompressed copy's block artefacts raise the Laplacian variance, so
    sharpness alone would prefer the worse copy of a duplicate pair."""
    tables = getattr(im, "quantization", None)
    if im.format != "JPEG" or not tables:
        return 100.0
    scale = 100.0 * float(np.mean(tables[0])) / _STD_LUMA_MEAN
    q = (200.0 - scale) / 2.0 if scale <= 100.0 else 5000.0 / scale
    return float(np.clip(q, 1.0, 100.0))


def open_oriented(path: Path) -> tuple[Image.Image, bool]:
    """The decoded image with its EXIF orientation applied; raises on undecodable files.
    The result carries ``info["encode_quality"]`` (see ``encode_quality``)."""
    with Image.open(path) as im:
        quality = encode_quality(im)
        rotated = ImageOps.exif_transpose(im)
        rotated.load()
        changed = rotated.size != im.size or im.getexif().get(0x0112, 1) not in (1, None)
        rotated.info["encode_quality"] = quality
        return rotated, changed


def pixel_hash(img: Image.Image) -> str:
    """sha256 of the decoded RGB pixels and size: equal for re-encodings of the same picture."""
    rgb = img.convert("RGB")
    h = hashlib.sha256(f"{rgb.width}x{rgb.height}".encode())
    h.update(rgb.tobytes())
    return h.hexdigest()


def phash_bits(gray: Image.Image) -> np.ndarray:
    """pHash: signs of the 8x8 lowest DCT frequencies of a 32x32 grey copy vs their median."""
    a = np.asarray(gray.resize((32, 32), Image.Resampling.BOX), dtype=np.float64)
    low = dctn(a, norm="ortho")[:8, :8].ravel()
    return np.packbits(low > np.median(low[1:]))


def dhash_bits(gray: Image.Image) -> np.ndarray:
    """dHash: horizontal gradient signs of a 9x8 grey copy."""
    a = np.asarray(gray.resize((9, 8), Image.Resampling.BOX), dtype=np.int16)
    return np.packbits((a[:, 1:] > a[:, :-1]).ravel())


def luma_stats(gray: np.ndarray) -> tuple[float, float, float, float, float, float]:
    """(laplacian variance, mean, dark share, bright share, std, entropy) of a uint8 grey array."""
    g = gray.astype(np.float32)
    if min(g.shape) >= 3:
        lap = g[1:-1, :-2] + g[1:-1, 2:] + g[:-2, 1:-1] + g[2:, 1:-1] - 4.0 * g[1:-1, 1:-1]
        lap_var = float(lap.var())
    else:
        lap_var = 0.0
    hist = np.bincount(gray.ravel(), minlength=256).astype(np.float64)
    p = hist / max(hist.sum(), 1.0)
    nz = p[p > 0]
    entropy = float(-(nz * np.log2(nz)).sum())
    return (lap_var, float(g.mean()), float(p[:16].sum()), float(p[240:].sum()), float(g.std()), entropy)


def measure(img: Image.Image) -> dict[str, object]:
    """All pixel measures of one decoded (oriented) image."""
    gray = img.convert("L")
    if max(gray.size) > ANALYSIS_SIDE:
        gray = gray.copy()
        gray.thumbnail((ANALYSIS_SIDE, ANALYSIS_SIDE), Image.Resampling.BOX)
    lap, mean, dark, bright, std, ent = luma_stats(np.asarray(gray))
    return {
        "laplacian_var": lap, "brightness": mean, "dark_fraction": dark, "bright_fraction": bright,
        "contrast": std, "entropy": ent, "phash": phash_bits(gray), "dhash": dhash_bits(gray),
    }


class FeatureBuilder:
    """Accumulates per-item measures into column arrays (see ``ImageFeatures``)."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.ok = np.zeros(n, bool)
        self.error: list[str | None] = [None] * n
        self.exif_rotated = np.zeros(n, bool)
        self.encode_quality = np.zeros(n)
        self.size = np.zeros((n, 2), np.int32)
        self.cols = {k: np.zeros(n) for k in ("laplacian_var", "brightness", "dark_fraction",
                                               "bright_fraction", "contrast", "entropy")}
        self.phash = np.zeros((n, HASH_BYTES), np.uint8)
        self.dhash = np.zeros((n, HASH_BYTES), np.uint8)
        self.pixel_sha: list[str | None] = [None] * n

    def add(self, i: int, img: Image.Image, rotated: bool, exact: bool) -> None:
        m = measure(img)
        self.ok[i] = True
        self.exif_rotated[i] = rotated
        self.encode_quality[i] = img.info.get("encode_quality", 100.0)
        self.size[i] = img.size
        for k in self.cols:
            self.cols[k][i] = m[k]
        self.phash[i], self.dhash[i] = m["phash"], m["dhash"]
        if exact:
            self.pixel_sha[i] = pixel_hash(img)

    def fail(self, i: int, message: str) -> None:
        self.error[i] = message

    def build(self) -> ImageFeatures:
        return ImageFeatures(
            ok=self.ok, error=self.error, width=self.size[:, 0], height=self.size[:, 1],
            exif_rotated=self.exif_rotated, encode_quality=self.encode_quality, phash=self.phash, dhash=self.dhash,
            pixel_sha256=self.pixel_sha, **self.cols,
        )


DECODE_ERRORS = (OSError, UnidentifiedImageError, Image.DecompressionBombError, ValueError)


def extract_features(paths: list[Path], exact: bool = True) -> ImageFeatures:
    """Measure every image (no CLIP). Undecodable files get ``ok=False`` and an error message."""
    fb = FeatureBuilder(len(paths))
    for i, path in enumerate(paths):
        try:
            img, rotated = open_oriented(path)
        except DECODE_ERRORS as e:
            fb.fail(i, f"cannot decode: {e}")
            continue
        fb.add(i, img, rotated, exact)
    return fb.build()


def concat_features(parts: list[ImageFeatures]) -> ImageFeatures:
    """The rows of ``parts`` one after another (batches measured apart, e.g. on other workers)."""
    if not parts:
        return FeatureBuilder(0).build()
    arrays = {k: np.concatenate([getattr(p, k) for p in parts]) for k in (
        "ok", "width", "height", "exif_rotated", "encode_quality", "laplacian_var", "brightness", "dark_fraction",
        "bright_fraction", "contrast", "entropy", "phash", "dhash")}
    return ImageFeatures(error=[e for p in parts for e in p.error],
                         pixel_sha256=[h for p in parts for h in p.pixel_sha256], **arrays)
