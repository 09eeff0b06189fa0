"""Test isolation: a private Prefect home, no hub access, no stray LORA_FACTORY_* settings."""

from __future__ import annotations

import os
import tempfile
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
for _key in [k for k in os.environ if k.startswith("LORA_FACTORY_")]:
    del os.environ[_key]


@pytest.fixture(scope="session")
def model_cache() -> Path:
    """Tiny models are built once per test session and shared."""
    path = _SESSION_TMP / "models"
    path.mkdir(exist_ok=True)
    return path


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
