"""``inspect --fix OUT``: a cleaned copy of a dataset, and a log of every change.

The input is only read. Undecodable files and duplicates are left out (the report's kept copy
stays), junk and symlinks are never copied, EXIF rotation is applied to the pixels and odd colour
modes become 8-bit RGB (transparency flattened on white), captions get the trigger word exactly
once and are trimmed to the token budget. What cannot be fixed without a person (missing
captions, small or elongated images) is copied as it is and stays in the next report.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from PIL import Image, ImageOps

from lora_factory.errors import DatasetError
from lora_factory.schemas import DoctorReport

from .captions import TokenBudget, fit_human, trim_caption
from .measure import to_rgb
from .readers import METADATA, Dataset, Sample

DROP = ("corrupt", "exact_duplicate", "near_duplicate")
REENCODE = ("exif_rotation", "colour_mode")
TEMPLATE = "[trigger], [caption]"


@dataclass(frozen=True)
class Change:
    file: str
    action: str  # removed | re-encoded | caption
    reason: str
    detail: str = ""


def check_target(src: Path, out: Path) -> None:
    """Refuse an output that would touch the input or overwrite something."""
    src, dst = src.resolve(), out.resolve()
    if dst == src or src in dst.parents or dst in src.parents:
        raise DatasetError(f"--fix {out} overlaps the dataset {src}: give a separate, new folder")
    if out.exists() and any(out.iterdir()):
        raise DatasetError(f"--fix {out} is not empty: give a new folder (the doctor never overwrites)")


def write_fixed(ds: Dataset, report: DoctorReport, out: Path, budget: TokenBudget, trigger: str | None) -> list[Change]:
    """Write the cleaned copy of ``ds`` to ``out``; returns the changes, in file order."""
    check_target(ds.root, out)
    flags = {im.file: set(im.flags) for im in report.images}
    changes = [Change(j, "removed", "junk") for j in ds.junk + ds.symlinks]
    rows = []
    for s in ds.samples:
        f = flags.get(s.rel, set())
        dropped = next((c for c in DROP if c in f), None)
        if dropped:
            changes.append(Change(s.rel, "removed", dropped))
            continue
        target = out / s.rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if f & set(REENCODE):
            changes.append(Change(s.rel, "re-encoded", ",".join(sorted(f & set(REENCODE))), _reencode(s.path, target)))
        else:
            shutil.copyfile(s.path, target)
        caption, change = _caption(s, budget, trigger)
        if change:
            changes.append(change)
        if caption is not None:
            if ds.layout == "imagefolder":
                rows.append({"file_name": s.rel, "text": caption})
            else:
                target.with_suffix(".txt").write_text(caption, encoding="utf-8")
    if ds.layout == "imagefolder":
        (out / METADATA).write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return changes


def _caption(s: Sample, budget: TokenBudget, trigger: str | None) -> tuple[str | None, Change | None]:
    if not s.caption:
        return s.caption, None
    if trigger:
        fitted = fit_human(s.caption, trigger, TEMPLATE, "tags" if "," in s.caption else "sentence", budget)
    else:
        fitted = trim_caption(s.caption, budget)
    if fitted.caption == s.caption:
        return s.caption, None
    why = "trimmed to the token budget" if fitted.trimmed else "trigger word placed once"
    return fitted.caption, Change(s.rel, "caption", why, fitted.caption)


def _reencode(src: Path, target: Path) -> str:
    with Image.open(src) as im:
        fmt = im.format or "PNG"
        rotated = ImageOps.exif_transpose(im)
        rgb = to_rgb(rotated)
    exif = Image.Exif()  # orientation now in the pixels: no tag left to rotate them twice
    if fmt == "JPEG":
        rgb.save(target, "JPEG", quality=95, exif=exif)
    else:
        rgb.save(target, "PNG" if fmt not in ("WEBP", "PNG") else fmt, exif=exif)
    return f"{rgb.width}x{rgb.height} RGB {fmt}"


def write_log(changes: list[Change], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([asdict(c) for c in changes], indent=1), encoding="utf-8")
