"""Child program for the first-set-up race test: set up and use MLflow's and Prefect's databases
on a home that may be fresh, all children starting at once so that they collide.

Run as ``python -m tests.child_first_setup HOME BARRIER_DIR N`` (``PREFECT_HOME`` set by the
caller): each child waits in ``BARRIER_DIR`` until ``N`` children have arrived.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from lora_factory.context import make_tracker
from lora_factory.firstrun import ensure_prefect_api, ensure_tracking_store
from lora_factory.home import home_of
from lora_factory.profiles import load_config

if __name__ == "__main__":
    home, barrier, n = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
    cfg = load_config("tiny", {"home": home})
    (barrier / str(os.getpid())).touch()
    deadline = time.monotonic() + 300
    while len(list(barrier.iterdir())) < n and time.monotonic() < deadline:
        time.sleep(0.01)
    ensure_tracking_store(cfg)
    tracker = make_tracker(cfg)
    tracker.end(tracker.start_parent("first run"))
    ensure_prefect_api(home_of(cfg))
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        client.read_flows(limit=1)
    print("ok", flush=True)
