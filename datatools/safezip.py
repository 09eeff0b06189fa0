"""Unpack a user's zip file without trusting it.

Why each rule: an entry named ``../x`` or ``/etc/x`` writes outside the folder (zip slip); a
symlink entry points anywhere once followed; a few kilobytes can declare gigabytes (a zip bomb),
so sizes are checked before anything is written and again while bytes are copied (headers can
lie). Any broken rule refuses the whole archive with one line naming the entry.
"""

from __future__ import annotations

import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from lora_factory.errors import DatasetError

_CHUNK = 1 << 20


@dataclass(frozen=True)
class ZipLimits:
    max_files: int = 100_000
    max_total_bytes: int = 20 << 30  # uncompressed
    max_ratio: float = 200.0  # uncompressed / compressed, for entries above ratio_floor_bytes
    ratio_floor_bytes: int = 1 << 20  # tiny entries compress absurdly well and are harmless


def _entry_problem(info: zipfile.ZipInfo, limits: ZipLimits) -> str | None:
    """Why ``info`` must not be unpacked, or None."""
    name = info.filename.replace("\\", "/")
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        return "is an absolute path"
    if ".." in PurePosixPath(name).parts:
        return "climbs out of the folder ('..')"
    if stat.S_ISLNK(info.external_attr >> 16):
        return "is a symbolic link"
    if info.file_size > limits.ratio_floor_bytes and info.file_size > limits.max_ratio * max(info.compress_size, 1):
        return (f"expands {info.file_size / max(info.compress_size, 1):.0f}x "
                f"(limit {limits.max_ratio:.0f}x): a zip bomb")
    return None


def check_zip(zf: zipfile.ZipFile, source: Path, limits: ZipLimits) -> list[zipfile.ZipInfo]:
    """The file entries to unpack; raises ``DatasetError`` on the first unsafe one."""
    infos = zf.infolist()
    if len(infos) > limits.max_files:
        raise DatasetError(f"zip {source} holds {len(infos)} entries, over the limit of {limits.max_files}")
    total = sum(i.file_size for i in infos)
    if total > limits.max_total_bytes:
        raise DatasetError(f"zip {source} expands to {total} bytes, over the limit of {limits.max_total_bytes}")
    for info in infos:
        problem = _entry_problem(info, limits)
        if problem:
            raise DatasetError(f"zip {source}: entry {info.filename!r} {problem}; refused (unpack it yourself if you trust it)")
    return [i for i in infos if not i.is_dir()]


def extract_zip(source: Path, dest: Path, limits: ZipLimits | None = None) -> Path:
    """Unpack ``source`` into ``dest`` (created) after ``check_zip``; returns ``dest``."""
    limits = limits or ZipLimits()
    try:
        zf = zipfile.ZipFile(source)
    except (zipfile.BadZipFile, OSError) as e:
        raise DatasetError(f"{source} is not a readable zip file ({e})") from None
    with zf:
        entries = check_zip(zf, source, limits)
        dest.mkdir(parents=True, exist_ok=True)
        written = 0
        for info in entries:
            target = dest / PurePosixPath(info.filename.replace("\\", "/"))
            target.parent.mkdir(parents=True, exist_ok=True)
            written = _copy_entry(zf, info, target, written, limits, source)
    return dest


def _copy_entry(zf: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path, written: int,
                limits: ZipLimits, source: Path) -> int:
    """Copy one entry, counting real bytes: a header that under-declares its size still stops."""
    size = 0
    try:
        with zf.open(info) as src, open(target, "wb") as out:
            while chunk := src.read(_CHUNK):
                size += len(chunk)
                if size > info.file_size or written + size > limits.max_total_bytes:
                    raise DatasetError(f"zip {source}: entry {info.filename!r} holds more bytes than it declares; refused")
                out.write(chunk)
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise DatasetError(f"zip {source}: entry {info.filename!r} cannot be read ({e})") from None
    return written + size
