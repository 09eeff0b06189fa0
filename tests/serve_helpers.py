"""Shared helpers of the serving tests (and bench/serve.py): throwaway PostgreSQL databases, a
served app in a subprocess on loopback, and small random LoRA files on the tiny pipeline."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

PG = {"host": "127.0.0.1", "port": 5432, "user": "postgres"}
ROOT = Path(__file__).resolve().parent.parent


@contextmanager
def postgres_db() -> Iterator[str]:
    """A fresh database on the local PostgreSQL, dropped afterwards; yields its SQLAlchemy URL."""
    import psycopg

    name = f"lf_serve_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(dbname="postgres", autocommit=True, **PG) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    try:
        yield f"postgresql://{PG['user']}@{PG['host']}:{PG['port']}/{name}"
    finally:
        with psycopg.connect(dbname="postgres", autocommit=True, **PG) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def request(method: str, url: str, body: Any = None, token: str | None = None,
            raw: bytes | None = None, timeout: float = 120) -> tuple[int, dict[str, str], bytes]:
    """One HTTP request; returns (status, headers, body) for 2xx and error answers alike."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def wait_for(url: str, proc: subprocess.Popen[bytes] | None = None, timeout_s: float = 180) -> None:
    """Poll ``url`` until it answers 200 (bounded); fail early if ``proc`` died."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if request("GET", url, timeout=5)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer within {timeout_s} s")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def serve_process(home: Path, token: str, *sets: str, tracking_uri: str | None = None,
                  feedback_url: str | None = None) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """``lora-factory serve`` in a subprocess on a free loopback port; yields (base URL, process)."""
    port = free_port()
    args = [str(Path(sys.executable).parent / "lora-factory"), "serve", "--home", str(home),
            "--port", str(port)]
    if tracking_uri:
        args += ["--tracking-uri", tracking_uri]
    if feedback_url:
        args += ["--set", f"serve.feedback_url={feedback_url}"]
    for s in sets:
        args += ["--set", s]
    env = {**os.environ, "LORA_FACTORY_SERVE_TOKEN": token}
    home.mkdir(parents=True, exist_ok=True)
    log = (home / f"serve-{port}.log").open("wb")
    proc = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=home)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(f"{base}/health", proc)
        yield base, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(30)
        log.close()
