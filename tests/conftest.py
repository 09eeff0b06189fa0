"""Test isolation: a private Prefect home, no hub access, no stray LORA_FACTORY_* settings."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

_SESSION_TMP = Path(tempfile.mkdtemp(prefix="lora-factory-tests-"))
os.environ["PREFECT_HOME"] = str(_SESSION_TMP / "prefect")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
# In-process flows start Prefect's temporary server; 20 s (the default) is too short on a loaded machine.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "300")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["DO_NOT_TRACK"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
if os.environ.get("PYTEST_XDIST_WORKER"):
    # Under `make test` two worker processes share the machine: one torch thread each (and in
    # the CLI runs they start) instead of every process spinning a thread per core. Tiny models
    # gain nothing from a second thread.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")
for _key in [k for k in os.environ if k.startswith("LORA_FACTORY_")]:
    del os.environ[_key]


def _prefect_answers(api_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=5) as resp:
            return resp.status == 200
    except OSError:
        return False


def _start_prefect_server(home: Path, timeout_s: float = 300.0) -> tuple[subprocess.Popen[bytes], str]:
    """``prefect server start`` on a free loopback port (a few attempts: the port is picked before
    the server binds it); returns the process and its API URL once it answers."""
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env["PREFECT_HOME"] = str(home)
    for _attempt in range(3):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        log = open(_SESSION_TMP / f"prefect-server-{port}.log", "wb")  # noqa: SIM115 - the child writes it
        proc = subprocess.Popen([str(Path(sys.executable).parent / "prefect"), "server", "start", "--host",
                                 "127.0.0.1", "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        api_url = f"http://127.0.0.1:{port}/api"
        deadline = time.monotonic() + timeout_s
        while proc.poll() is None and time.monotonic() < deadline and not _prefect_answers(api_url):
            time.sleep(0.5)
        if proc.poll() is None and _prefect_answers(api_url):
            return proc, api_url
        _stop(proc)
    raise RuntimeError(f"the test session's Prefect server did not start (logs in {_SESSION_TMP})")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.fixture(scope="session", autouse=True)
def prefect_server(request: pytest.FixtureRequest) -> Iterator[str | None]:
    """One Prefect server for the CLI processes of a session that holds end-to-end tests.

    Why: without ``PREFECT_API_URL`` every ``lora-factory run`` starts a temporary server of its
    own (seconds each, a minute on a loaded machine); with one server they behave as under
    ``lora-factory server``. In-process flows keep the temporary server: Prefect read its settings
    when this process imported it. Tests of the no-server path clear ``PREFECT_API_URL`` themselves.
    """
    if not any(item.get_closest_marker("e2e") for item in request.session.items):
        yield None
        return
    # The same database as the temporary servers of in-process flows: tests look runs up in it.
    proc, api_url = _start_prefect_server(Path(os.environ["PREFECT_HOME"]))
    os.environ["PREFECT_API_URL"] = api_url
    try:
        yield api_url
    finally:
        os.environ.pop("PREFECT_API_URL", None)
        _stop(proc)


@pytest.fixture(scope="session")
def model_cache() -> Path:
    """Tiny models are built once per test session and shared."""
    path = _SESSION_TMP / "models"
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.services)])
def feedback_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A feedback store URL: a SQLite file, then a fresh database on the local PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'feedback.db'}"
    else:
        from tests.serve_helpers import postgres_db

        with postgres_db() as url:
            yield url


@pytest.fixture(scope="session")
def moto_s3() -> Iterator[str]:
    """A real S3 API (moto's server) on loopback; yields its endpoint URL."""
    from moto.server import ThreadedMotoServer

    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3_bucket(moto_s3: str) -> str:
    """A fresh bucket per test; yields ``s3://<bucket>/prefix``."""
    import uuid

    import boto3

    name = f"lf-{uuid.uuid4().hex[:16]}"
    boto3.client("s3", endpoint_url=moto_s3).create_bucket(Bucket=name)
    return f"s3://{name}/factory"


@pytest.fixture(scope="session")
def tiny_lora(model_cache: Path) -> Path:
    """A LoRA trained for 2 steps on tiny:sd (diffusers + kohya files, card, training args),
    trigger word ``lfstyle``; shared, so tests must not change it."""
    from tests.training_helpers import small_cfg, tiny_job, write_dataset
    from training.trainer import train_lora

    dataset = write_dataset(_SESSION_TMP / "tiny-lora-ds", [(64, 64), (64, 64)])
    out = _SESSION_TMP / "tiny-lora"
    train_lora(tiny_job(dataset, small_cfg(max_steps=2, batch_size=2, learning_rate=5e-2), out, model_cache,
                        card={"trigger_word": "lfstyle"}))
    return out
