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


def stop_process(proc: subprocess.Popen[bytes], grace_s: float = 30) -> None:
    """SIGTERM, then SIGKILL if it has not exited within ``grace_s``."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(30)


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


def wait_for(url: str, proc: subprocess.Popen[bytes] | None = None, timeout_s: float = 600) -> None:
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
                  feedback_url: str | None = None, env: dict[str, str] | None = None,
                  ) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
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
    env = {**os.environ, **(env or {}), "LORA_FACTORY_SERVE_TOKEN": token}
    home.mkdir(parents=True, exist_ok=True)
    log = (home / f"serve-{port}.log").open("wb")
    proc = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=home)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(f"{base}/health", proc)
        yield base, proc
    finally:
        stop_process(proc)
        log.close()


@contextmanager
def serve_in_thread(app: Any) -> Iterator[str]:
    """A uvicorn server of ``app`` in a thread on a free loopback port; yields its base URL."""
    import threading

    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(f"{base}/health", timeout_s=60)
        yield base
    finally:
        server.should_exit = True
        thread.join(30)


def random_lora(model_cache: Path, out_dir: Path, seed: int) -> Path:
    """A diffusers-format LoRA file for ``tiny:sd`` with random (non-zero) weights, saved by the
    trainer's own ``save_lora``: what a trained adapter looks like, in a second, not a run."""
    import torch

    from lora_factory.config import TrainConfig
    from lora_factory.models import load_pipeline
    from training.families import family_for
    from training.lora import add_denoiser_lora, save_lora

    pipe = load_pipeline("tiny:sd", "sd15", model_cache)
    add_denoiser_lora(pipe.unet, TrainConfig(rank=4), seed, family_for("sd15").default_targets)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in pipe.unet.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.3)
    out_dir.mkdir(parents=True, exist_ok=True)
    return save_lora(pipe, out_dir)


def register_champion(tracking_uri: str, artifact_root: Path, concept: str, lora_file: Path,
                      base_ref: str = "tiny:sd") -> str:
    """Log ``lora_file``'s folder to a run, register it as ``concept``'s newest version and
    point ``champion`` at it (what deploy does for a promoted candidate); returns the version."""
    from deploy.serving.champion import CHAMPION_ALIAS, registered_model_for
    from lora_factory.tracking import Tracker

    tracker = Tracker(tracking_uri, "serve-tests", artifact_root)
    run_id = tracker.start_parent(f"serve-{concept}")
    tracker.log_artifacts(run_id, lora_file.parent, "lora")
    name = registered_model_for(concept)
    version = tracker.register(name, run_id, "lora", tags={"base_model": base_ref})
    tracker.set_alias(name, CHAMPION_ALIAS, version)
    tracker.end(run_id)
    return version
