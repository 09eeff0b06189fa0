"""Two first runs on a fresh home do not race on database set-up (issue 10, item 7).

Both processes start setting up MLflow's SQLite database and Prefect's at the same moment; the
set-up lock in ``<home>/locks/`` lets one do it while the other waits, so neither dies of "table
already exists" or "duplicate column name".
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_two_first_runs_set_up_the_databases_one_after_the_other(tmp_path: Path) -> None:
    home, barrier = tmp_path / "home", tmp_path / "barrier"
    barrier.mkdir()
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_API_URL": "",
           "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "300"}  # a loaded machine is slow
    children = [
        subprocess.Popen([sys.executable, "-m", "tests.child_first_setup", str(home), str(barrier), "2"],
                         cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outputs = [child.communicate(timeout=600) for child in children]
    for child, (out, err) in zip(children, outputs, strict=True):
        assert child.returncode == 0 and out.strip() == "ok", err[-3000:]
    assert {p.name.split("-")[0] for p in (home / "locks").glob("*.ready")} == {"mlflow", "prefect"}
