"""Build a directory once and publish it atomically.

Why: several processes (Prefect task runners, pytest workers) may ask for the same tiny model at
the same time. Each builds into its own temporary directory next to the target and renames it into
place; ``rename`` is atomic, so a reader sees either nothing or a complete directory, and the loser
of a race throws its copy away.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def build_once(target: Path, build: Callable[[Path], None]) -> Path:
    """Return ``target``; if it is missing, ``build(tmp_dir)`` and rename ``tmp_dir`` to it."""
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))
    try:
        build(tmp)
        try:
            os.rename(tmp, target)
        except OSError:
            if not target.is_dir():  # not a lost race: a real error
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
