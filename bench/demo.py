"""Time `lora-factory demo` end to end on this machine and print JSON figures.

Two runs in fresh data folders: ``cold`` (tiny models built, MLflow DB created) and ``warm``
(same home: the model cache and DB exist), plus the seconds of every stage from run.json.
Target (issue 2): the demo under 300 s after the install on a 2-core machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLI = Path(sys.executable).parent / "lora-factory"


def run_demo(home: Path, prefect_home: Path) -> dict[str, object]:
    env = {**os.environ, "PREFECT_HOME": str(prefect_home), "PREFECT_LOGGING_LEVEL": "WARNING"}
    started = time.perf_counter()
    proc = subprocess.run([str(CLI), "demo", "--home", str(home)], env=env, cwd=ROOT,
                          capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"demo failed ({proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}")
    run_dirs = sorted((home / "runs").iterdir())
    state = json.loads((run_dirs[-1] / "run.json").read_text())
    return {
        "seconds": round(seconds, 1),
        "stages": {k: v.get("seconds") for k, v in state["stages"].items()},
    }


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="lf-bench-") as tmp:
        home, prefect_home = Path(tmp) / "home", Path(tmp) / "prefect"
        cold = run_demo(home, prefect_home)
        warm = run_demo(home, prefect_home)
    print(json.dumps({
        "bench": "demo",
        "cpu_count": os.cpu_count(),
        "cold": cold,
        "warm": warm,
        "target_seconds": 300,
        "meets_target": cold["seconds"] <= 300,
    }, indent=2))


if __name__ == "__main__":
    main()
