"""Child program for the run-lock tests: lock a run, say so, and work on it until killed.

Run as ``python -m tests.child_hold_run STORE_ROOT WORK_ROOT RUN_ID``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from lora_factory import runlock
from lora_factory.runstore import RunStore
from lora_factory.storage import open_store

if __name__ == "__main__":
    root, work, run_id = sys.argv[1:4]
    run = RunStore(open_store(root), Path(work)).open(run_id)
    runlock.hold(run)
    print("held", flush=True)
    while True:
        time.sleep(60)
