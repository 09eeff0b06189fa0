"""One process works on a run at a time, and a dead one holds nothing (issue 10, item 6)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lora_factory import runlock
from lora_factory.runlock import LEASE_NAME, RunLock, RunLockedError, holder
from lora_factory.runstore import RunStore
from lora_factory.storage import open_store

REPO = Path(__file__).resolve().parent.parent
CLI = Path(sys.executable).parent / "lora-factory"


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(CLI), *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def _holder_process(root: str, work: Path, run_id: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-m", "tests.child_hold_run", root, str(work), run_id],
                            cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_process_is_turned_away_and_a_killed_one_holds_nothing(tmp_path: Path) -> None:
    home = tmp_path / "home"
    runs = RunStore(open_store(str(home)), home / "work")
    run = runs.create(["lighthouse"], "tiny", {}, mlflow_parent_run_id="0" * 32)
    child = _holder_process(str(home), home / "work", run.run_id)
    try:
        proc = _cli("run", "--resume", run.run_id, "--home", str(home), cwd=tmp_path)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]  # one line
        assert f"error: run {run.run_id} is in use by pid {child.pid} on {socket.gethostname()} (since 20" \
            in proc.stderr
        assert "wait for it to finish, or stop that process" in proc.stderr
        listing = _cli("runs", "--home", str(home), cwd=tmp_path).stdout
        assert f"{run.run_id}  running " in listing
        with pytest.raises(RunLockedError, match=f"pid {child.pid}"):
            runlock.hold(runs.open(run.run_id))
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    # The kernel dropped the dead process's lock: the run shows as interrupted, and can be taken.
    listing = _cli("runs", "--home", str(home), cwd=tmp_path).stdout
    assert f"{run.run_id}  interrupted lighthouse" in listing
    lock = runlock.hold(runs.open(run.run_id))
    assert holder(run) is not None and holder(run).pid == os.getpid()
    runlock.release(run)
    assert holder(run) is None and lock.run.run_id == run.run_id


def test_s3_runs_are_leased_with_a_heartbeat(tmp_path: Path, s3_bucket: str, moto_s3: str) -> None:
    """Another machine (another work folder) sees the lease; a lease that stopped beating, or
    whose holder on this machine is dead, is free."""
    store = open_store(s3_bucket, s3_endpoint_url=moto_s3)
    here = RunStore(store, tmp_path / "machine-a")
    there = RunStore(store, tmp_path / "machine-b")
    run = here.create(["cactus"], "tiny", {})
    first = RunLock(here.open(run.run_id))
    first.acquire()
    lease = json.loads(store.read_bytes(f"{run.key}/{LEASE_NAME}"))
    assert lease["pid"] == os.getpid() and lease["host"] == socket.gethostname()
    with pytest.raises(RunLockedError, match="last heartbeat 0 s ago"):
        RunLock(there.open(run.run_id)).acquire()
    first.release()
    assert not store.exists(f"{run.key}/{LEASE_NAME}")

    other = there.open(run.run_id)
    stale = {**lease, "host": "elsewhere", "token": "t", "heartbeat": time.time() - 3600}
    store.write_bytes(f"{run.key}/{LEASE_NAME}", json.dumps(stale).encode())
    assert holder(other) is None
    taken = RunLock(other)
    taken.acquire()  # a lease that stopped beating an hour ago is free
    taken.release()

    dead = subprocess.Popen(["true"])
    dead.wait()
    gone = {**lease, "pid": dead.pid, "token": "t", "heartbeat": time.time()}
    store.write_bytes(f"{run.key}/{LEASE_NAME}", json.dumps(gone).encode())
    assert holder(other) is None  # a fresh lease of a dead process of this machine
    fresh = {**gone, "host": "elsewhere"}
    store.write_bytes(f"{run.key}/{LEASE_NAME}", json.dumps(fresh).encode())
    with pytest.raises(RunLockedError, match="on elsewhere"):
        RunLock(other).acquire()
