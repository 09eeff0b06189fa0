"""The doctor's checks: one function per kind of problem, each a finding with the files it
concerns and what to do, or nothing. ``findings`` runs them all and orders them worst first
(errors before warnings before notes, then by how many files each concerns)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import numpy as np

from lora_factory.schemas import DoctorFinding

from .facts import Facts
from .measure import SIXTEEN_BIT, FileMeasure

_SEVERITY = {"error": 0, "warning": 1, "info": 2}


def _n(count: int, noun: str) -> str:
    """``1 file``, ``3 files``, ``2 copies``."""
    if count == 1:
        return f"{count} {noun}"
    return f"{count} {noun[:-1]}ies" if noun.endswith("y") else f"{count} {noun}s"


def _finding(code: str, severity: str, rows: list[str], title: str, fix: str) -> DoctorFinding | None:
    return DoctorFinding(code=code, severity=severity, title=title, count=len(rows), files=rows, fix=fix) if rows else None  # type: ignore[arg-type]


def corrupt(f: Facts) -> DoctorFinding | None:
    rows = [s.rel for s, m in zip(f.ds.samples, f.m, strict=True) if not m.ok]
    return _finding("corrupt", "error", rows, f"{_n(len(rows), 'undecodable file')}",
                    f"remove or re-export these {_n(len(rows), 'file')} (--fix leaves them out)")


def junk(f: Facts) -> DoctorFinding | None:
    rows = f.ds.junk + f.ds.symlinks
    return _finding("junk", "warning", rows, f"{_n(len(rows), 'non-image file')} (__MACOSX, ._*, .DS_Store, symlinks)",
                    "delete them; trainers may try to read them (--fix leaves them out)")


def missing_captions(f: Facts) -> DoctorFinding | None:
    rows = [s.rel for s in f.ds.samples if s.caption is None]
    return _finding("missing_caption", "error", rows, f"{_n(len(rows), 'image')} without a caption",
                    f"caption these {_n(len(rows), 'image')} (a .txt file with the image's name)")


def empty_captions(f: Facts) -> DoctorFinding | None:
    rows = [s.rel for s in f.ds.samples if s.caption is not None and not s.caption.strip()]
    return _finding("empty_caption", "error", rows, f"{_n(len(rows), 'empty caption')}",
                    f"write captions for these {_n(len(rows), 'image')}")


def long_captions(f: Facts) -> DoctorFinding | None:
    rows = [s.rel for s, t in zip(f.ds.samples, f.tokens, strict=True) if t is not None and t > f.budget.limit]
    return _finding("caption_too_long", "warning", rows,
                    f"{_n(len(rows), 'caption')} over the text encoder's budget ({f.budget.name}): the end is cut off in training",
                    f"shorten these {_n(len(rows), 'caption')} (--fix trims them at a tag or clause boundary)")


def trigger_missing(f: Facts) -> DoctorFinding | None:
    rows = [s.rel for s, t in zip(f.ds.samples, f.triggers, strict=True) if t == 0 and s.caption]
    return _finding("trigger_missing", "warning", rows, f"trigger word {f.s.trigger!r} missing from {_n(len(rows), 'caption')}",
                    f"add {f.s.trigger!r} to these {_n(len(rows), 'caption')} (--fix puts it first)")


def trigger_repeated(f: Facts) -> DoctorFinding | None:
    rows = [s.rel for s, t in zip(f.ds.samples, f.triggers, strict=True) if t is not None and t > 1]
    return _finding("trigger_repeated", "warning", rows, f"trigger word {f.s.trigger!r} repeated in {_n(len(rows), 'caption')}",
                    f"keep {f.s.trigger!r} once in these {_n(len(rows), 'caption')} (--fix does)")


def exact_duplicates(f: Facts) -> DoctorFinding | None:
    rows = f.rel(np.flatnonzero(f.exact_of >= 0))
    return _finding("exact_duplicate", "warning", rows, f"{_n(len(rows), 'pixel-identical copy')} of other images",
                    f"remove these {_n(len(rows), 'copy')}; the largest, best-encoded copy of each is kept (--fix does)")


def near_duplicates(f: Facts) -> DoctorFinding | None:
    rows = f.rel(np.flatnonzero(f.near_of >= 0))
    return _finding("near_duplicate", "warning", rows, f"{_n(len(rows), 'near-duplicate')} (resized, recompressed or lightly edited copies)",
                    f"remove these {_n(len(rows), 'near-duplicate')}; the best copy of each is kept (--fix does)")


def below_resolution(f: Facts) -> DoctorFinding | None:
    floor = f.s.doctor.min_pixel_share * f.s.resolution ** 2
    rows = [s.rel for s, m in zip(f.ds.samples, f.m, strict=True) if m.ok and m.width * m.height < floor]
    return _finding("below_resolution", "warning", rows,
                    f"{_n(len(rows), 'image')} with under {f.s.doctor.min_pixel_share:.0%} of the {f.s.resolution}x{f.s.resolution} training pixels",
                    f"replace these {_n(len(rows), 'image')} with larger versions, or remove them")


def extreme_aspect(f: Facts) -> DoctorFinding | None:
    lim = f.s.doctor.max_aspect
    rows = [s.rel for s, m in zip(f.ds.samples, f.m, strict=True) if m.ok and max(m.width, m.height) > lim * max(min(m.width, m.height), 1)]
    return _finding("extreme_aspect", "warning", rows, f"{_n(len(rows), 'image')} more elongated than {lim}:1",
                    f"crop these {_n(len(rows), 'image')} closer to the subject; buckets cut most of them away")


def small_buckets(f: Facts) -> DoctorFinding | None:
    return thin_buckets([(s.rel, b, s.repeats) for s, b in zip(f.ds.samples, f.bucket, strict=True)],
                        f.s.batch_size)


def thin_buckets(rows: list[tuple[str, str | None, int]], batch_size: int) -> DoctorFinding | None:
    """The small_bucket finding from (file, bucket, repeats) rows: buckets that cannot fill one
    batch per epoch (the trainer never mixes buckets in a batch, so theirs are always short).
    Also the train stage's gate, with the batch size the tuner chose."""
    if batch_size <= 1:
        return None
    count: Counter[str] = Counter()
    for _, b, repeats in rows:
        if b:
            count[b] += repeats
    thin = {b for b, c in count.items() if c < batch_size}
    files = [rel for rel, b, _ in rows if b in thin]
    return _finding("small_bucket", "warning", files,
                    f"{len(thin)} aspect buckets ({', '.join(sorted(thin))}) hold fewer images than the batch size {batch_size}",
                    f"crop these {_n(len(files), 'image')} to a common aspect ratio, add images of their shape, or lower the batch size")


def exif_rotation(f: Facts) -> DoctorFinding | None:
    rows = [s.rel for s, m in zip(f.ds.samples, f.m, strict=True) if m.ok and m.exif_rotated]
    return _finding("exif_rotation", "info", rows, f"{_n(len(rows), 'image')} rotated by EXIF metadata, which some tools ignore",
                    f"apply the rotation to the pixels of these {_n(len(rows), 'image')} (--fix does)")


def colour_modes(f: Facts) -> DoctorFinding | None:
    kinds = {s.rel: _mode_kind(m) for s, m in zip(f.ds.samples, f.m, strict=True) if m.ok}
    rows = [r for r, k in kinds.items() if k]
    tally = ", ".join(f"{n} {k}" for k, n in Counter(k for k in kinds.values() if k).most_common())
    return _finding("colour_mode", "warning", rows, f"{_n(len(rows), 'image')} not in plain 8-bit RGB ({tally})",
                    f"convert these {_n(len(rows), 'image')} to 8-bit RGB, flattening transparency on white (--fix does)")


def _mode_kind(m: FileMeasure) -> str:
    if m.mode == "CMYK":
        return "CMYK"
    if m.mode in ("P", "PA"):
        return "palette"
    if m.mode in SIXTEEN_BIT:
        return "16-bit"
    return "alpha" if m.has_alpha else ""


def grayscale(f: Facts) -> DoctorFinding | None:
    gray = np.array([m.ok and m.grayscale for m in f.m])
    if not f.ok.any() or gray.sum() * 2 >= f.ok.sum():
        return None  # a black-and-white set is a choice, not a defect
    rows = f.rel(np.flatnonzero(gray))
    return _finding("grayscale", "warning", rows, f"{_n(len(rows), 'grayscale image')} in a colour set",
                    f"remove these {_n(len(rows), 'image')} or caption them 'black and white' so the LoRA does not learn to drop colour")


def outliers(f: Facts) -> DoctorFinding | None:
    rows = f.rel(np.flatnonzero(f.outlier))
    return _finding("outlier", "warning", rows, f"{_n(len(rows), 'image')} far from every group of the others (CLIP embedding space)",
                    f"check these {_n(len(rows), 'image')}: remove them if they are off-concept")


def dominant_cluster(f: Facts) -> DoctorFinding | None:
    labels = f.cluster[f.cluster >= 0]
    if len(labels) < 8:
        return None
    top, n = Counter(labels.tolist()).most_common(1)[0]
    share = n / len(labels)
    if share <= f.s.doctor.dominant_cluster_share:
        return None
    return _finding("dominant_cluster", "info", f.rel(np.flatnonzero(f.cluster == top)),
                    f"{share:.0%} of images are one cluster", "add other views, poses and lighting of the concept")


CHECKS: tuple[Callable[[Facts], DoctorFinding | None], ...] = (
    corrupt, junk, missing_captions, empty_captions, long_captions, trigger_missing, trigger_repeated,
    exact_duplicates, near_duplicates, below_resolution, extreme_aspect, small_buckets, exif_rotation,
    colour_modes, grayscale, outliers, dominant_cluster,
)


def findings(f: Facts) -> list[DoctorFinding]:
    return worst_first([x for x in (check(f) for check in CHECKS) if x is not None])


def worst_first(found: list[DoctorFinding]) -> list[DoctorFinding]:
    """Errors before warnings before notes, then by how many files each concerns."""
    return sorted(found, key=lambda x: (_SEVERITY[x.severity], -x.count))
