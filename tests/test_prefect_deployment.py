"""The way users schedule the factory: a Prefect server, `prefect deploy`, a deployment run with
`--param topics=...`, and a process worker that runs it (all on loopback)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent

pytestmark = pytest.mark.e2e


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def prefect_server(tmp_path: Path) -> Iterator[dict[str, str]]:
    port = _free_port()
    env = {**os.environ, "COLUMNS": "200", "PREFECT_HOME": str(tmp_path / "prefect"),
           "PREFECT_API_URL": f"http://127.0.0.1:{port}/api", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    log = open(tmp_path / "server.log", "w")  # noqa: SIM115 - closed below
    server = subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                              env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    pytest.fail(f"prefect server did not start: {(tmp_path / 'server.log').read_text()[-2000:]}")
                time.sleep(1)
        yield env
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
        log.close()


def prefect(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([str(BIN / "prefect"), "--no-prompt", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, (args, proc.stdout[-2000:], proc.stderr[-2000:])
    return proc


def test_deployment_run_with_topics_param(prefect_server: dict[str, str], tmp_path: Path) -> None:
    env = prefect_server
    prefect(env, "work-pool", "create", "lora-factory", "--type", "process")
    deployed = prefect(env, "deploy", "--all")
    assert "lora-factory/nightly" in deployed.stdout and "lora-factory/on-demand" in deployed.stdout
    home = tmp_path / "data"
    overrides = json.dumps({"home": str(home), "train.max_steps": 3})
    prefect(env, "deployment", "run", "lora-factory/on-demand",
            "--param", 'topics=["lighthouse"]', "--param", f"overrides={overrides}")
    prefect(env, "worker", "start", "--pool", "lora-factory", "--run-once", timeout=600)

    runs = list((home / "runs").iterdir())
    assert len(runs) == 1
    state = json.loads((runs[0] / "run.json").read_text())
    assert state["topics"] == ["lighthouse"] and state["status"] == "done"
    assert (runs[0] / "deploy" / "decision.json").is_file()
    flow_runs = prefect(env, "flow-run", "ls", "--state", "COMPLETED")
    assert "tiny: lighthouse" in flow_runs.stdout  # the flow-run name: profile and topics

    nightly = prefect(env, "deployment", "inspect", "lora-factory/nightly")
    assert "0 2 * * *" in nightly.stdout
