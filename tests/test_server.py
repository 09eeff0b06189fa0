"""`lora-factory server`: the way users run the factory as a service. Persistent Prefect and
MLflow servers on loopback, the deployments of prefect.yaml, a process worker; a deployment run
with `--param topics=...` completes, shows in both servers, and attaches its summary."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
CLI = BIN / "lora-factory"

pytestmark = pytest.mark.e2e


def cli(*args: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """The CLI without the test session's PREFECT_API_URL: these runs must find the home's server."""
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    return subprocess.run([str(CLI), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def prefect(api_url: str, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PREFECT_API_URL": api_url, "COLUMNS": "200"}
    proc = subprocess.run([str(BIN / "prefect"), "--no-prompt", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, (args, proc.stdout[-3000:], proc.stderr[-3000:])
    return proc


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as resp:
        return json.loads(resp.read())


def _post(url: str, body: dict) -> list | dict:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    tmp_path = tmp_path_factory.mktemp("server")
    home = tmp_path / "home"
    started = cli("server", "--home", str(home), "--set", "server.prefect_port=0", "--set", "server.mlflow_port=0",
                  cwd=tmp_path)
    try:
        assert started.returncode == 0, started.stderr[-3000:]
        state = json.loads((home / "server" / "state.json").read_text())
        yield {"home": home, "tmp": tmp_path, "state": state, "api": state["prefect_url"] + "/api"}
    finally:
        stopped = cli("server", "--stop", "--home", str(home), cwd=tmp_path)
        assert stopped.returncode == 0, stopped.stderr


def test_a_deployment_run_completes_on_the_server_and_is_tracked_there(server: dict) -> None:
    api, home = server["api"], server["home"]
    assert _get(f"{api}/health") is True
    with urllib.request.urlopen(f"{server['state']['mlflow_url']}/health", timeout=30) as resp:
        assert resp.status == 200
    deployments = {d["name"] for d in _post(f"{api}/deployments/filter", {})}
    assert {"nightly", "on-demand"} <= deployments
    nightly = prefect(api, "deployment", "inspect", "lora-factory/nightly")
    assert "0 2 * * *" in nightly.stdout

    overrides = json.dumps({"train.max_steps": 3})
    prefect(api, "deployment", "run", "lora-factory/on-demand", "--param", 'topics=["lighthouse"]',
            "--param", f"overrides={overrides}", "--watch")

    runs = _post(f"{api}/flow_runs/filter", {"flow_runs": {"state": {"type": {"any_": ["COMPLETED"]}}}})
    runs = [r for r in runs if r["parameters"].get("topics") == ["lighthouse"]]
    assert len(runs) == 1
    run_dirs = [d for d in (home / "runs").iterdir() if json.loads((d / "run.json").read_text())["topics"] == ["lighthouse"]]
    assert len(run_dirs) == 1
    state = json.loads((run_dirs[0] / "run.json").read_text())
    assert state["status"] == "done" and state["mlflow_tracking_uri"] == server["state"]["mlflow_url"]
    # The MLflow run is on the tracking server, with its seven stage runs.
    mlflow = server["state"]["mlflow_url"]
    experiment = _get(f"{mlflow}/api/2.0/mlflow/experiments/get-by-name?experiment_name=lora-factory")
    found = _post(f"{mlflow}/api/2.0/mlflow/runs/search",
                  {"experiment_ids": [experiment["experiment"]["experiment_id"]], "filter": f"tags.`lora_factory.run_id` = '{run_dirs[0].name}'"})
    assert len(found["runs"]) == 8
    # The run attached its DAG, its summary and its stage timings.
    artifacts = _post(f"{api}/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [runs[0]["id"]]}}})
    by_key = {a["key"]: a for a in artifacts}
    assert {"lora-factory-dag", "lora-factory-summary", "lora-factory-timings"} <= set(by_key)
    summary = by_key["lora-factory-summary"]["data"]
    assert f"# LoRA Factory run {run_dirs[0].name}" in summary and "status **done**" in summary
    assert f"{server['state']['mlflow_url']}/#/experiments/" in summary  # a link into the MLflow UI
    assert "curate/dataset.parquet" in by_key["lora-factory-dag"]["data"]
    timings = json.loads(by_key["lora-factory-timings"]["data"])
    assert [row["stage"] for row in timings][:2] == ["crawl", "curate"] and all(row["seconds"] for row in timings)


def test_a_cli_run_goes_to_the_running_server(server: dict) -> None:
    """A CLI run (made to stop early at curation, to keep this quick) is a flow run of the
    server, not of a temporary one: it shows in the server's UI with its state."""
    run = cli("run", "-t", "sailboat", "--home", str(server["home"]), "--set", "curate.min_side=100000",
              "--max-pages", "10", cwd=server["tmp"], timeout=900)
    assert run.returncode == 2, run.stderr[-3000:]
    flows = [f for f in _post(f"{server['api']}/flow_runs/filter", {})
             if f["parameters"].get("topics") == ["sailboat"]]
    assert len(flows) == 1 and flows[0]["state_type"] == "FAILED"


def test_servers_on_postgresql(tmp_path: Path) -> None:
    """Prefect's and MLflow's databases can be PostgreSQL (the local server at 127.0.0.1:5432)."""
    import psycopg2

    names = [f"lf_test_{uuid.uuid4().hex[:8]}_{kind}" for kind in ("prefect", "mlflow")]
    admin = psycopg2.connect(host="127.0.0.1", user="postgres", dbname="postgres")
    admin.autocommit = True
    for name in names:
        admin.cursor().execute(f"CREATE DATABASE {name}")
    home = tmp_path / "home"
    try:
        started = cli("server", "--home", str(home), "--set", "server.prefect_port=0",
                      "--set", "server.mlflow_port=0", "--set",
                      f"server.prefect_database_url=postgresql+asyncpg://postgres@127.0.0.1:5432/{names[0]}",
                      "--tracking-uri", f"postgresql://postgres@127.0.0.1:5432/{names[1]}", cwd=tmp_path)
        assert started.returncode == 0, started.stderr[-3000:]
        state = json.loads((home / "server" / "state.json").read_text())
        assert {d["name"] for d in _post(f"{state['prefect_url']}/api/deployments/filter", {})} >= {"on-demand"}
        for name, table in zip(names, ("deployment", "experiments"), strict=True):
            with psycopg2.connect(host="127.0.0.1", user="postgres", dbname=name) as con, con.cursor() as cur:
                cur.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = %s", (table,))
                assert cur.fetchone()[0] == 1, (name, table)
        assert not (home / "prefect" / "prefect.db").exists()
    finally:
        cli("server", "--stop", "--home", str(home), cwd=tmp_path)
        for name in names:
            admin.cursor().execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.close()
