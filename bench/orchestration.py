"""Orchestration overhead and cached re-runs, on the tiny demo; prints JSON.

- ``overhead``: the demo's flow wall time (run.json: the run's creation to its last stage's end)
  against the sum of its stages' own seconds (each stage's ``run_stage`` span). What is left is
  Prefect's task handling, the cache decisions and the MLflow parent-run bookkeeping between
  stages. Target: ≤10% of the flow's wall time. The process wall time (imports, the temporary
  Prefect API server) is shown beside it.
- ``cached_rerun``: ``lora-factory run --resume RUN`` right after the run finished: every stage
  is a cache hit. Target: its process wall time ≤20% of the cold run's.

``python bench/orchestration.py``
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLI = Path(sys.executable).parent / "lora-factory"


def cli(args: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    proc = subprocess.run([str(CLI), *args], env=env, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{args[0]} failed ({proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}")
    return time.perf_counter() - started


def _at(stamp: str) -> float:
    return datetime.fromisoformat(stamp).timestamp()


def flow_figures(state: dict) -> dict[str, float]:
    """Flow wall time (first stage start to last stage end) and the stages' own seconds."""
    stages = [v for v in state["stages"].values() if v.get("started_at") and v.get("finished_at")]
    start = min(_at(v["started_at"]) for v in stages)
    end = max(_at(v["finished_at"]) for v in stages)
    compute = sum(float(v.get("seconds") or 0) for v in stages)
    return {"flow_seconds": round(end - start, 2), "stage_seconds": round(compute, 2)}


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="lf-bench-orch-") as tmp:
        home = Path(tmp) / "home"
        env = {**os.environ, "PREFECT_HOME": str(Path(tmp) / "prefect"), "PREFECT_LOGGING_LEVEL": "WARNING"}
        cli(["demo", "--home", str(home)], env)  # builds the tiny models, the MLflow DB: not measured
        cold_s = cli(["demo", "--home", str(home)], env)
        run_dir = max((home / "runs").iterdir(), key=lambda p: p.stat().st_mtime)
        figures = flow_figures(json.loads((run_dir / "run.json").read_text()))
        cached_s = cli(["run", "--resume", run_dir.name, "--home", str(home)], env)
        state = json.loads((run_dir / "run.json").read_text())
    overhead = (figures["flow_seconds"] - figures["stage_seconds"]) / figures["flow_seconds"]
    hits = [s for s, v in state["stages"].items() if v.get("cache", {}).get("decision") == "hit"]
    print(json.dumps({
        "bench": "orchestration",
        "cpu_count": os.cpu_count(),
        "overhead": {**figures, "process_seconds": round(cold_s, 1), "overhead_share": round(overhead, 3),
                     "target_share": 0.10, "meets_target": overhead <= 0.10},
        "cached_rerun": {"seconds": round(cached_s, 1), "cold_seconds": round(cold_s, 1),
                         "ratio": round(cached_s / cold_s, 3), "cache_hits": hits,
                         "target_ratio": 0.20, "meets_target": cached_s / cold_s <= 0.20},
    }, indent=2))


if __name__ == "__main__":
    main()
