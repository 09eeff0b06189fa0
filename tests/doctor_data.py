"""Generated LoRA training folders for the dataset doctor's tests: clean images, and one file
per kind of defect the doctor must find (``PLANTED``: code -> the files it must name)."""

from __future__ import annotations

import io
import shutil
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

TRIGGER = "lfstyle"
FOLDER = "2_lfstyle"  # kohya: 2 repeats
CLEAN = 16


def shapes(seed: int, size: tuple[int, int] = (320, 320)) -> Image.Image:
    """A distinct colour picture: a gradient and a few shapes placed by ``seed``."""
    rng = np.random.default_rng(seed)
    w, h = size
    base = rng.integers(40, 200, 3)
    ramp = np.linspace(0, 1, w)[None, :, None] * rng.integers(-60, 60, 3)[None, None, :]
    arr = np.clip(base[None, None, :] + ramp + np.zeros((h, 1, 1)), 0, 255).astype(np.uint8)
    img = Image.fromarray(arr, "RGB")
    d = ImageDraw.Draw(img)
    for _ in range(4):
        x0, y0 = int(rng.integers(0, w - 40)), int(rng.integers(0, h - 40))
        box = (x0, y0, x0 + int(rng.integers(30, w // 2)), y0 + int(rng.integers(30, h // 2)))
        colour = tuple(int(c) for c in rng.integers(0, 255, 3))
        (d.ellipse if rng.random() < 0.5 else d.rectangle)(box, fill=colour)
    return img


def _save(img: Image.Image, path: Path, caption: str | None, **kw: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **kw)
    if caption is not None:
        path.with_suffix(".txt").write_text(caption)


def clean_folder(root: Path, n: int = CLEAN) -> list[str]:
    """A kohya folder of ``n`` clean images with good captions; their relative paths."""
    out = []
    for i in range(n):
        rel = f"{FOLDER}/clean_{i:02d}.png"
        _save(shapes(i), root / rel, f"{TRIGGER}, shapes on a gradient, picture {i}")
        out.append(rel)
    return out


def planted_folder(root: Path) -> tuple[list[str], dict[str, set[str]]]:
    """(clean files, planted defects): a kohya folder with every defect the doctor checks."""
    clean = clean_folder(root)
    d = root / FOLDER
    cap = f"{TRIGGER}, shapes on a gradient"
    (d / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 20)
    (d / "corrupt.txt").write_text(cap)
    (root / "__MACOSX" / FOLDER).mkdir(parents=True)
    (root / "__MACOSX" / FOLDER / "._clean_00.png").write_bytes(b"\0\5\26\7")
    (d / "._clean_01.png").write_bytes(b"\0\5\26\7")
    (root / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    _save(shapes(101), d / "nocap.png", None)
    _save(shapes(102), d / "emptycap.png", "")
    _save(shapes(103), d / "longcap.png", f"{TRIGGER}, " + ", ".join(f"detail number {k}" for k in range(40)))
    _save(shapes(104), d / "notrigger.png", "shapes on a gradient, no trigger here")
    _save(shapes(105), d / "twotrigger.png", f"{TRIGGER}, shapes, {TRIGGER} again")
    shutil.copy(d / "clean_03.png", d / "dup_exact.png")
    (d / "dup_exact.txt").write_text(cap)
    _save(shapes(5).resize((300, 300)), d / "near_dup.jpg", cap, quality=90)
    _save(shapes(106, (120, 120)), d / "small.png", cap)
    _save(shapes(107, (900, 250)), d / "wide.png", cap)
    _save(shapes(108, (256, 384)), d / "tall.png", cap)
    exif = Image.Exif()
    exif[0x0112] = 6
    _save(shapes(109), d / "rotated.jpg", cap, quality=95, exif=exif)
    _save(shapes(110).convert("CMYK"), d / "cmyk.jpg", cap, quality=95)
    _save(shapes(111).quantize(64), d / "palette.png", cap)
    g16 = (np.asarray(shapes(112).convert("L"), np.uint16) * 257).astype(np.uint16)
    _save(Image.fromarray(g16), d / "sixteen.png", cap)  # mode I;16
    rgba = shapes(113).convert("RGBA")
    rgba.putalpha(Image.fromarray(np.where(np.arange(320)[None, :] < 100, 0, 255).astype(np.uint8).repeat(320, 0)))
    _save(rgba, d / "alpha.png", cap)
    _save(shapes(114).convert("L").convert("RGB"), d / "gray.png", cap)
    f = FOLDER + "/"
    planted = {
        "corrupt": {f + "corrupt.png"},
        "junk": {"__MACOSX", f"__MACOSX/{FOLDER}/._clean_00.png", f + "._clean_01.png", ".DS_Store"},
        "missing_caption": {f + "nocap.png"},
        "empty_caption": {f + "emptycap.png"},
        "caption_too_long": {f + "longcap.png"},
        "trigger_missing": {f + "notrigger.png"},
        "trigger_repeated": {f + "twotrigger.png"},
        "exact_duplicate": {f + "dup_exact.png"},
        "near_duplicate": {f + "near_dup.jpg"},
        "below_resolution": {f + "small.png"},
        "extreme_aspect": {f + "wide.png"},
        "small_bucket": {f + "tall.png"},
        "exif_rotation": {f + "rotated.jpg"},
        "colour_mode": {f + "cmyk.jpg", f + "palette.png", f + "sixteen.png", f + "alpha.png"},
        "grayscale": {f + "gray.png"},
        # outlier: tiny CLIP is random, so it is tested on controlled vectors (test_doctor.py)
    }
    return clean, planted


def zip_bytes(entries: dict[str, bytes], symlinks: dict[str, str] | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (0o120777 << 16)
            zf.writestr(info, target)
    return buf.getvalue()


def png_bytes(seed: int) -> bytes:
    buf = io.BytesIO()
    shapes(seed).save(buf, "PNG")
    return buf.getvalue()
