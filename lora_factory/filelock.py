"""Inter-process locks on local files (``fcntl.flock``).

Why flock: the kernel drops the lock when its holder dies, however it dies (SIGKILL, a power
cut on a local disk), so a dead process never keeps a run or a set-up step locked. A lock file
is never deleted: a process that deleted it while another one opened it would let two
processes hold "the" lock on two different files.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _open(path: Path) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    return os.open(path, os.O_RDWR | os.O_CREAT, 0o644)  # not inherited by child processes


def try_lock(path: Path) -> int | None:
    """An exclusive lock on ``path`` without waiting: the open descriptor, or None when another
    open descriptor (any process, this one included) holds it."""
    fd = _open(path)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def unlock(fd: int) -> None:
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


def is_locked(path: Path) -> bool:
    """Whether some process holds ``path``'s lock right now (a missing file is not locked)."""
    if not path.exists():
        return False
    fd = try_lock(path)
    if fd is None:
        return True
    unlock(fd)
    return False


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold ``path``'s lock for the block, waiting for it as long as it takes."""
    fd = _open(path)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
