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

A fully cached re-run with no Prefect server configured ends without a flow (``cli/cached.py``):
``flow_skipped`` says whether it did. ``--repeats N`` makes N cold runs and N cached re-runs per
mode and reports their medians (a loaded machine's figures vary run to run); ``--modes`` picks
``temporary``, ``server`` or both.

``python bench/orchestration.py [--repeats 3] [--modes temporary]``
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLI = Path(sys.executable).parent / "lora-factory"


def cli(args: list[str], env: dict[str, str], python_flags: tuple[str, ...] = ()) -> tuple[float, str, str]:
    """(wall seconds, stderr, stdout) of one ``lora-factory`` process."""
    started = time.perf_counter()
    cmd = [sys.executable, *python_flags, str(CLI), *args] if python_flags else [str(CLI), *args]
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{args[0]} failed ({proc.returncode}): {proc.stderr.strip().splitlines()[-3:]}")
    return time.perf_counter() - started, proc.stderr, proc.stdout


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


def cold_and_cached(home: Path, env: dict[str, str], repeats: int = 1) -> dict[str, object]:
    """``repeats`` times: a cold demo run, then the same run resumed (every stage a cache hit);
    the medians of each, and the ratio of the medians."""
    colds, cacheds, ratios, skipped = [], [], [], []
    for _ in range(repeats):
        cold_s, _, _ = cli(["demo", "--home", str(home)], env)
        run_dir = latest_run(home)
        figures = flow_figures(json.loads((run_dir / "run.json").read_text()))
        cached_s, _, out = cli(["run", "--resume", run_dir.name, "--home", str(home)], env)
        colds.append(cold_s)
        cacheds.append(cached_s)
        ratios.append(round(cached_s / cold_s, 3))
        skipped.append("no flow ran" in out)
    state = json.loads((run_dir / "run.json").read_text())
    hits = [s for s, v in state["stages"].items() if v.get("cache", {}).get("decision") == "hit"]
    overhead = (figures["flow_seconds"] - figures["stage_seconds"]) / figures["flow_seconds"]
    cold, cached = statistics.median(colds), statistics.median(cacheds)
    return {
        "overhead": {**figures, "process_seconds": round(cold_s, 1), "overhead_share": round(overhead, 3),
                     "target_share": 0.10, "meets_target": overhead <= 0.10},
        "cached_rerun": {"seconds": round(cached, 1), "cold_seconds": round(cold, 1),
                         "ratio": round(cached / cold, 3), "cache_hits": hits, "flow_skipped": skipped,
                         "repeats": repeats, "all_seconds": [round(x, 1) for x in cacheds],
                         "all_cold_seconds": [round(x, 1) for x in colds], "all_ratios": ratios,
                         "target_ratio": 0.20, "meets_target": cached / cold <= 0.20},
        "run_dir": run_dir,
    }


def with_server(home: Path, env: dict[str, str], repeats: int = 1) -> dict[str, object]:
    """The same against a running ``lora-factory server`` (free loopback ports): how nightly runs."""
    ports = ["--set", "server.prefect_port=0", "--set", "server.mlflow_port=0"]
    start_s, _, _ = cli(["server", "--home", str(home), *ports], env)
    try:
        figures = cold_and_cached(home, env, repeats)
    finally:
        cli(["server", "--home", str(home), "--stop"], env)
    return {"server_start_seconds": round(start_s, 1), **figures}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1, help="cold runs and cached re-runs per mode (medians)")
    parser.add_argument("--modes", default="temporary,server", help="temporary, server or both (comma-separated)")
    parser.add_argument("--home", type=Path, help="a data folder a demo ran in (its models built, Prefect's "
                        "database beside it as prefect/): skips the unmeasured first demo")
    args = parser.parse_args()
    modes = set(args.modes.split(","))
    out: dict[str, object] = {"bench": "orchestration", "cpu_count": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="lf-bench-orch-") as tmp:
        home = args.home.resolve() if args.home else Path(tmp) / "home"
        env = {**os.environ, "PREFECT_HOME": str(home.parent / "prefect"), "PREFECT_LOGGING_LEVEL": "WARNING"}
        env.pop("PREFECT_API_URL", None)
        # Prefect's temporary server gets 120 s to start (cli.common); a loaded machine can need more.
        env.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "600")
        if not args.home:
            cli(["demo", "--home", str(home)], env)  # builds the tiny models, the MLflow DB: not measured
        out["load_average_before"] = [round(x, 1) for x in os.getloadavg()]
        if "temporary" in modes:
            temporary = cold_and_cached(home, env, args.repeats)
            run_dir = temporary.pop("run_dir")
            out["temporary_prefect_server"] = temporary
            _, stderr, _ = cli(["run", "--resume", run_dir.name, "--home", str(home)], env, ("-X", "importtime"))
            out["cached_rerun_imports"] = import_profile(stderr)
        if "server" in modes:
            server = with_server(home, env, args.repeats)
            server.pop("run_dir")
            out["lora_factory_server"] = server
    out["load_average"] = [round(x, 1) for x in os.getloadavg()]
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
