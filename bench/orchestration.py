"""Orchestration overhead and cached re-runs, on the tiny demo; prints JSON.

- ``overhead``: the demo's flow wall time (run.json: the run's creation to its last stage's end)
  against the sum of its stages' own seconds (each stage's ``run_stage`` span). What is left is
  Prefect's task handling, the cache decisions and the MLflow parent-run bookkeeping between
  stages. Target: ≤10% of the flow's wall time. The process wall time (imports, the temporary
  Prefect API server) is shown beside it.
- ``cached_rerun``: ``lora-factory run --resume RUN`` right after the run finished: every stage
  is a cache hit. Target: its process wall time ≤20% of the cold run's.

Both twice: with the temporary Prefect API server each CLI process starts (``temporary_prefect_server``)
and against a running ``lora-factory server`` (``lora_factory_server``: how users run nightly).
``cached_rerun_imports``: where a cached re-run's import time goes (``-X importtime``), and whether
it imported the ML libraries (it should not: stage tasks are imported only when a stage runs).

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


def cli(args: list[str], env: dict[str, str], python_flags: tuple[str, ...] = ()) -> tuple[float, str]:
    """(wall seconds, stderr) of one ``lora-factory`` process."""
    started = time.perf_counter()
    cmd = [sys.executable, *python_flags, str(CLI), *args] if python_flags else [str(CLI), *args]
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{args[0]} failed ({proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}")
    return time.perf_counter() - started, proc.stderr


def _at(stamp: str) -> float:
    return datetime.fromisoformat(stamp).timestamp()


def flow_figures(state: dict) -> dict[str, float]:
    """Flow wall time (first stage start to last stage end) and the stages' own seconds."""
    stages = [v for v in state["stages"].values() if v.get("started_at") and v.get("finished_at")]
    start = min(_at(v["started_at"]) for v in stages)
    end = max(_at(v["finished_at"]) for v in stages)
    compute = sum(float(v.get("seconds") or 0) for v in stages)
    return {"flow_seconds": round(end - start, 2), "stage_seconds": round(compute, 2)}


def import_profile(stderr: str) -> dict[str, object]:
    """From ``-X importtime``: seconds spent importing, the heaviest top-level packages, and
    whether the heavy ML libraries were imported at all."""
    cumulative: dict[str, int] = {}  # top-level imports only (their time includes their children's)
    roots: dict[str, int] = {}  # per root package, its costliest import anywhere in the tree
    for line in stderr.splitlines():
        parts = line[len("import time:"):].split("|") if line.startswith("import time:") else []
        if len(parts) != 3 or not parts[1].strip().isdigit():
            continue
        name = parts[2].strip()
        roots[name.split(".")[0]] = max(roots.get(name.split(".")[0], 0), int(parts[1]))
        if len(parts[2]) - len(parts[2].lstrip()) == 1:
            cumulative[name] = cumulative.get(name, 0) + int(parts[1])
    heavy = ("torch", "diffusers", "transformers", "open_clip", "scrapy", "mlflow", "prefect")
    top = sorted(roots.items(), key=lambda kv: -kv[1])[:8]
    return {"import_seconds": round(sum(cumulative.values()) / 1e6, 2),
            "top": {k: round(v / 1e6, 2) for k, v in top},
            "imported": [h for h in heavy if h in roots]}


def latest_run(home: Path) -> Path:
    return max((home / "runs").iterdir(), key=lambda p: p.stat().st_mtime)


def cold_and_cached(home: Path, env: dict[str, str]) -> dict[str, object]:
    """A cold demo run, then the same run resumed (every stage a cache hit)."""
    cold_s, _ = cli(["demo", "--home", str(home)], env)
    run_dir = latest_run(home)
    figures = flow_figures(json.loads((run_dir / "run.json").read_text()))
    cached_s, _ = cli(["run", "--resume", run_dir.name, "--home", str(home)], env)
    state = json.loads((run_dir / "run.json").read_text())
    hits = [s for s, v in state["stages"].items() if v.get("cache", {}).get("decision") == "hit"]
    overhead = (figures["flow_seconds"] - figures["stage_seconds"]) / figures["flow_seconds"]
    return {
        "overhead": {**figures, "process_seconds": round(cold_s, 1), "overhead_share": round(overhead, 3),
                     "target_share": 0.10, "meets_target": overhead <= 0.10},
        "cached_rerun": {"seconds": round(cached_s, 1), "cold_seconds": round(cold_s, 1),
                         "ratio": round(cached_s / cold_s, 3), "cache_hits": hits,
                         "target_ratio": 0.20, "meets_target": cached_s / cold_s <= 0.20},
        "run_dir": run_dir,
    }


def with_server(home: Path, env: dict[str, str]) -> dict[str, object]:
    """The same against a running ``lora-factory server`` (free loopback ports): how nightly runs."""
    ports = ["--set", "server.prefect_port=0", "--set", "server.mlflow_port=0"]
    start_s, _ = cli(["server", "--home", str(home), *ports], env)
    try:
        figures = cold_and_cached(home, env)
    finally:
        cli(["server", "--home", str(home), "--stop"], env)
    return {"server_start_seconds": round(start_s, 1), **figures}


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="lf-bench-orch-") as tmp:
        home = Path(tmp) / "home"
        env = {**os.environ, "PREFECT_HOME": str(Path(tmp) / "prefect"), "PREFECT_LOGGING_LEVEL": "WARNING"}
        cli(["demo", "--home", str(home)], env)  # builds the tiny models, the MLflow DB: not measured
        temporary = cold_and_cached(home, env)
        run_dir = temporary.pop("run_dir")
        _, stderr = cli(["run", "--resume", run_dir.name, "--home", str(home)], env, ("-X", "importtime"))
        imports = import_profile(stderr)
        server = with_server(home, env)
        server.pop("run_dir")
    print(json.dumps({
        "bench": "orchestration",
        "cpu_count": os.cpu_count(),
        "load_average": [round(x, 1) for x in os.getloadavg()],
        "temporary_prefect_server": temporary,
        "lora_factory_server": server,
        "cached_rerun_imports": imports,
    }, indent=2))


if __name__ == "__main__":
    main()
