"""Persistent local services for ``lora-factory server``: a Prefect server, an MLflow server, a
process work pool with its worker, and the deployments of ``prefect.yaml``.

Why: without them every CLI run starts a temporary Prefect server (seconds of start-up) whose
runs vanish with it. The services run detached (their own session), write logs under
``<home>/server/``, and ``state.json`` there records their addresses and process ids (never a
database password), so later CLI runs send their flow runs to this server and ``--stop`` ends
them.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

from lora_factory.config import FactoryConfig
from lora_factory.errors import ConfigError, FactoryError
from lora_factory.home import home_of
from lora_factory.runlock import pid_alive
from lora_factory.secrets import redact_text

ROOT = Path(__file__).resolve().parent.parent  # the checkout: prefect.yaml and the flow code
BIN = Path(sys.executable).parent


class ServiceError(FactoryError):
    """A local service did not start or answer."""


@dataclass
class ServerState:
    prefect_url: str  # the UI; the API is <prefect_url>/api
    mlflow_url: str
    pids: dict[str, int]
    work_pool: str

    @property
    def api_url(self) -> str:
        return f"{self.prefect_url}/api"


def state_file(cfg: FactoryConfig) -> Path:
    return home_of(cfg).server / "state.json"


def _answers(url: str, timeout_s: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            return resp.status == 200
    except OSError:
        return False


def running_server(cfg: FactoryConfig) -> ServerState | None:
    """The server of ``cfg``'s home when all of its processes live and Prefect answers."""
    path = state_file(cfg)
    if not path.is_file():
        return None
    try:
        state = ServerState(**json.loads(path.read_text()))
    except (ValueError, TypeError):
        return None
    if all(pid_alive(pid) for pid in state.pids.values()) and _answers(f"{state.api_url}/health"):
        return state
    return None


def _port(host: str, wanted: int, setting: str) -> int:
    with socket.socket() as s:
        try:
            s.bind((host, wanted))
        except OSError:
            raise ConfigError(f"port {wanted} on {host} is in use: set {setting}=N (0 picks a free port)") from None
        return s.getsockname()[1]


def _spawn(name: str, cmd: list[str], env: dict[str, str], logs: Path) -> subprocess.Popen[bytes]:
    log = open(logs / f"{name}.log", "ab")  # noqa: SIM115 - handed to the child, which outlives us
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)


def _wait(name: str, proc: subprocess.Popen[bytes], url: str, timeout_s: float, logs: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while not _answers(url):
        if proc.poll() is not None or time.monotonic() > deadline:
            tail = (logs / f"{name}.log").read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
            why = "exited" if proc.poll() is not None else f"did not answer in {timeout_s:.0f} s"
            raise ServiceError(f"{name} {why}: {redact_text(tail[0])[:300]} (log: {logs / f'{name}.log'})")
        time.sleep(1)


def _run_prefect(args: list[str], env: dict[str, str], logs: Path) -> None:
    proc = subprocess.run([str(BIN / "prefect"), "--no-prompt", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    with open(logs / "deploy.log", "a") as log:
        log.write(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        last = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise ServiceError(f"prefect {args[0]} failed: {redact_text(last[0])[:300]} (log: {logs / 'deploy.log'})")


def _base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update({"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1", "COLUMNS": "200"})
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # byte-code caching halves every start-up
    return env


def start_server(cfg: FactoryConfig) -> ServerState:
    """Start the services (or return the running ones) and deploy prefect.yaml to them."""
    running = running_server(cfg)
    if running is not None:
        return running
    scfg, home = cfg.server, home_of(cfg)
    if cfg.tracking.uri.startswith(("http://", "https://")):
        raise ConfigError(f"tracking.uri is a server already ({redact_text(cfg.tracking.uri)}): "
                          "the local MLflow server serves a database (sqlite:/// or postgresql://)")
    logs = home.server
    logs.mkdir(parents=True, exist_ok=True)
    home.mlartifacts.mkdir(parents=True, exist_ok=True)
    prefect_port = _port(scfg.host, scfg.prefect_port, "server.prefect_port")
    mlflow_port = _port(scfg.host, scfg.mlflow_port, "server.mlflow_port")
    prefect_url, mlflow_url = f"http://{scfg.host}:{prefect_port}", f"http://{scfg.host}:{mlflow_port}"
    env = {**_base_env(), "PREFECT_HOME": str(home.prefect)}
    if scfg.prefect_database_url:
        env["PREFECT_API_DATABASE_CONNECTION_URL"] = scfg.prefect_database_url
    procs = {
        "prefect-server": _spawn("prefect-server", [str(BIN / "prefect"), "server", "start", "--host", scfg.host,
                                                    "--port", str(prefect_port)], env, logs),
        "mlflow-server": _spawn("mlflow-server", [str(BIN / "mlflow"), "server", "--backend-store-uri", cfg.tracking.uri,
                                                  "--default-artifact-root", home.mlartifacts.as_uri(),
                                                  "--host", scfg.host, "--port", str(mlflow_port)], env, logs),
    }
    try:
        _wait("prefect-server", procs["prefect-server"], f"{prefect_url}/api/health", scfg.start_timeout_s, logs)
        _wait("mlflow-server", procs["mlflow-server"], f"{mlflow_url}/health", scfg.start_timeout_s, logs)
        client_env = {**env, "PREFECT_API_URL": f"{prefect_url}/api"}
        _run_prefect(["work-pool", "create", scfg.work_pool, "--type", "process", "--overwrite"], client_env, logs)
        _run_prefect(["deploy", "--all"], client_env, logs)
        # Deployment runs track through the MLflow server, so their summaries link to its UI.
        worker_env = {**client_env, "LORA_FACTORY_HOME": str(home.root), "LORA_FACTORY_TRACKING__URI": mlflow_url}
        procs["worker"] = _spawn("worker", [str(BIN / "prefect"), "worker", "start", "--pool", scfg.work_pool], worker_env, logs)
    except BaseException:
        _terminate({name: p.pid for name, p in procs.items()})
        raise
    state = ServerState(prefect_url, mlflow_url, {n: p.pid for n, p in procs.items()}, scfg.work_pool)
    tmp = state_file(cfg).with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(state), indent=2))
    tmp.replace(state_file(cfg))
    return state


def _terminate(pids: dict[str, int], grace_s: float = 20.0) -> list[str]:
    """SIGTERM each process group, SIGKILL what is left after ``grace_s``; the names stopped."""
    stopped = []
    for name, pid in pids.items():
        try:
            os.killpg(pid, signal.SIGTERM)
            stopped.append(name)
        except ProcessLookupError:
            continue
    deadline = time.monotonic() + grace_s
    while any(pid_alive(pid) for pid in pids.values()) and time.monotonic() < deadline:
        time.sleep(0.2)
        for pid in pids.values():
            try:
                os.waitpid(pid, os.WNOHANG)  # reap our own children (the server we just started)
            except ChildProcessError:
                pass
    for pid in pids.values():
        if pid_alive(pid):
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    return stopped


def stop_server(cfg: FactoryConfig) -> list[str]:
    """End the services of ``cfg``'s home; the names of those that were running."""
    path = state_file(cfg)
    if not path.is_file():
        return []
    try:
        pids = json.loads(path.read_text()).get("pids", {})
    except ValueError:
        pids = {}
    stopped = _terminate({k: int(v) for k, v in pids.items()})
    path.unlink(missing_ok=True)
    return stopped
