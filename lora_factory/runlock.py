"""One process works on a run at a time, and a dead process holds no run.

Two ``lora-factory run --resume RUN`` at once would train into the same checkpoint folder and
register two model versions. So a process locks the run while it works on it:

- every store: ``flock`` on a lock file (``<run>/.lock`` in a local store, ``<work>/<run>/.lock``
  for a remote one). The kernel drops it when the holder dies, however it dies. The file says who
  holds it (host, pid, since), so the process that is turned away can name the holder.
- remote (S3) stores, which other machines share: also a lease object ``<run>/.lease.json``
  renewed every ``HEARTBEAT_S``. A lease whose heartbeat is older than ``LEASE_TTL_S``, or whose
  holder is a process of this machine that no longer exists, is free. (Two machines that take
  the same free lease within a moment of each other can both win: S3 has no lock; the window is
  the store's write-and-read-back time.)

``lora-factory runs`` uses ``holder`` to tell a live run from one whose process died.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import StoreError
from .filelock import is_locked, try_lock, unlock
from .runstore import RunDir, now_iso

LOCK_NAME = ".lock"
LEASE_NAME = ".lease.json"
HEARTBEAT_S = 20.0
LEASE_TTL_S = 90.0


class RunLockedError(StoreError):
    """Another process is working on the run."""


@dataclass
class Holder:
    host: str
    pid: int
    since: str
    token: str = ""
    heartbeat: float = 0.0

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host} (since {self.since})"

    def live(self) -> bool:
        """For a lease: renewed recently, and not a process of this machine that has died."""
        if time.time() - self.heartbeat > LEASE_TTL_S:
            return False
        return self.host != socket.gethostname() or pid_alive(self.pid)


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists on this machine (another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _parse_holder(data: bytes) -> Holder | None:
    try:
        fields = json.loads(data)
        return Holder(**fields) if isinstance(fields, dict) else None
    except (ValueError, TypeError):
        return None


def lock_path(run: RunDir) -> Path:
    local = run.store.local_path(f"{run.key}/{LOCK_NAME}")
    return local if local is not None else run.work_root / run.run_id / LOCK_NAME


def _remote(run: RunDir) -> bool:
    return run.store.local_path(run.key) is None


def _read_lease(run: RunDir) -> Holder | None:
    key = f"{run.key}/{LEASE_NAME}"
    return _parse_holder(run.store.read_bytes(key)) if run.store.exists(key) else None


def holder(run: RunDir) -> Holder | None:
    """Who works on ``run`` now; None when nobody does (a holder that died counts as nobody)."""
    path = lock_path(run)
    if is_locked(path):
        try:
            found = _parse_holder(path.read_bytes())
        except OSError:
            found = None
        return found or Holder(host="?", pid=0, since="?")
    if _remote(run):
        lease = _read_lease(run)
        if lease is not None and lease.live():
            return lease
    return None


def locked_error(run: RunDir, who: Holder) -> RunLockedError:
    beat = f", last heartbeat {time.time() - who.heartbeat:.0f} s ago" if who.heartbeat else ""
    return RunLockedError(
        f"run {run.run_id} is in use by {who.describe()}{beat}: wait for it to finish, or stop "
        "that process and resume again"
    )


class RunLock:
    """The lock of one run, held by this process between ``acquire`` and ``release``."""

    def __init__(self, run: RunDir) -> None:
        self.run = run
        self.me = Holder(socket.gethostname(), os.getpid(), now_iso(), uuid.uuid4().hex)
        self._fd: int | None = None
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def acquire(self) -> None:
        """Take the lock or raise ``RunLockedError`` naming its holder."""
        path = lock_path(self.run)
        fd = try_lock(path)
        if fd is None:
            raise locked_error(self.run, holder(self.run) or Holder("?", 0, "?"))
        self._fd = fd
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(asdict(self.me)).encode(), 0)
        if _remote(self.run):
            try:
                self._take_lease()
            except BaseException:
                self.release()
                raise

    def _write_lease(self) -> None:
        self.me.heartbeat = time.time()
        self.run.store.write_bytes(f"{self.run.key}/{LEASE_NAME}", json.dumps(asdict(self.me)).encode())

    def _take_lease(self) -> None:
        current = _read_lease(self.run)
        if current is not None and current.token != self.me.token and current.live():
            raise locked_error(self.run, current)
        self._write_lease()
        won = _read_lease(self.run)
        if won is None or won.token != self.me.token:
            raise locked_error(self.run, won or Holder("?", 0, "?"))
        self._beat = threading.Thread(target=self._heartbeat, name=f"lease-{self.run.run_id}", daemon=True)
        self._beat.start()

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                self._write_lease()
            except StoreError:
                continue  # the next beat tries again; the lease lives LEASE_TTL_S

    def release(self) -> None:
        if self._beat is not None:
            self._stop.set()
            self._beat.join(timeout=HEARTBEAT_S)
            lease = _read_lease(self.run)
            if lease is not None and lease.token == self.me.token:
                self.run.store.delete_prefix(f"{self.run.key}/{LEASE_NAME}")
            self._beat = None
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            unlock(self._fd)
            self._fd = None


_HELD: dict[str, RunLock] = {}


def hold(run: RunDir) -> RunLock:
    """Lock ``run`` for this process until ``release(run)`` (or the process ends)."""
    lock = RunLock(run)
    lock.acquire()
    _HELD[run.url] = lock
    return lock


def release(run: RunDir) -> None:
    lock = _HELD.pop(run.url, None)
    if lock is not None:
        lock.release()


def check_free(run: RunDir) -> None:
    """Raise ``RunLockedError`` when another process works on ``run`` (a quick look before
    starting; ``hold`` is what actually takes it)."""
    who = holder(run)
    if who is not None:
        raise locked_error(run, who)
