"""Build a directory once, publish it atomically, and trust it only while it is whole.

Why: several processes (Prefect task runners, pytest workers) may ask for the same tiny model at
the same time. Each builds into its own temporary directory next to the target and renames it into
place; ``rename`` is atomic, so a reader sees either nothing or a complete directory, and the loser
of a race throws its copy away.

Why a manifest: a folder can still be damaged after it was published (a disk that filled up
while copying a cache, a half-finished ``rm -r``, a truncated file). The build writes
``MANIFEST`` last, with the size and sha256 of every file; a folder whose manifest is missing or
disagrees with its files is moved aside and rebuilt instead of failing deep inside a loader.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path

MANIFEST = ".build-manifest.json"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.name != MANIFEST)


def write_manifest(root: Path) -> None:
    """Record every file of ``root`` (size and sha256); call it when the build is complete."""
    files = {str(p.relative_to(root)): {"size": p.stat().st_size, "sha256": _sha256(p)} for p in _files(root)}
    (root / MANIFEST).write_text(json.dumps({"files": files}, indent=1, sort_keys=True))


def is_whole(root: Path) -> bool:
    """``root`` holds exactly the files its manifest lists, with their sizes and hashes."""
    try:
        files = json.loads((root / MANIFEST).read_text())["files"]
        present = {str(p.relative_to(root)): p for p in _files(root)}
        if set(present) != set(files):
            return False
        return all(
            present[rel].stat().st_size == meta["size"] and _sha256(present[rel]) == meta["sha256"]
            for rel, meta in files.items()
        )
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _set_aside(target: Path) -> None:
    """Move a damaged ``target`` out of the way (atomically, so a concurrent reader never sees a
    half-deleted folder), then delete it."""
    aside = target.with_name(f".{target.name}.broken-{uuid.uuid4().hex[:8]}")
    try:
        os.rename(target, aside)
    except FileNotFoundError:
        return  # another process set it aside first
    shutil.rmtree(aside, ignore_errors=True)


def build_once(target: Path, build: Callable[[Path], None]) -> Path:
    """Return ``target``; if it is missing or damaged, ``build(tmp_dir)`` and rename ``tmp_dir``
    to it."""
    if is_whole(target):
        return target
    if target.exists() and not is_whole(target):  # checked again: another process may have just built it
        _set_aside(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))
    try:
        build(tmp)
        write_manifest(tmp)
        try:
            os.rename(tmp, target)
        except OSError:
            if not is_whole(target):  # not a lost race: a real error
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
