"""Credentials in URL-valued settings are used where needed and printed nowhere (issue 10, item 5).

The tracking health check sends ``http://user:password@host`` as HTTP basic auth, as MLflow's
client does, instead of looking ``user:password@host`` up as a host name; a store on S3 whose
endpoint carries credentials works and fails without showing them. The whole-run grep is in
``test_hardening_e2e.py``.
"""

from __future__ import annotations

import base64
import subprocess
import sys
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import boto3
import pytest

from lora_factory.errors import TrackingError
from lora_factory.runstore import RunStore
from lora_factory.storage import open_store
from lora_factory.tracking import check_tracking_uri
from spiders.sources.loopback import QuietLog, send_body, serve_in_thread

CLI = Path(sys.executable).parent / "lora-factory"
SECRET = "Pa55-w0rd"


@pytest.fixture
def basic_auth_server() -> Iterator[tuple[str, list[tuple[str, str | None]]]]:
    """A tracking server stand-in: /health answers 200 to user ``lf`` with ``SECRET``, else 401."""
    seen: list[tuple[str, str | None]] = []
    good = "Basic " + base64.b64encode(f"lf:{SECRET}".encode()).decode()

    class Handler(QuietLog, BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            auth = self.headers.get("Authorization")
            seen.append((self.path, auth))
            ok = self.path == "/mlflow/health" and auth == good
            send_body(self, 200 if ok else 401, "text/plain", b"OK" if ok else b"unauthorized")

    with serve_in_thread(ThreadingHTTPServer(("127.0.0.1", 0), Handler), "basic-auth") as base:
        yield base.removeprefix("http://"), seen


def test_the_health_check_sends_the_uris_credentials_as_basic_auth(basic_auth_server, monkeypatch) -> None:
    host, seen = basic_auth_server
    check_tracking_uri(f"http://lf:{SECRET}@{host}/mlflow")
    assert seen[-1] == ("/mlflow/health", "Basic " + base64.b64encode(f"lf:{SECRET}".encode()).decode())
    with pytest.raises(TrackingError) as info:
        check_tracking_uri(f"http://lf:wrong-{SECRET}@{host}/mlflow/")
    assert str(info.value) == (
        f"tracking server http://lf:***@{host}/mlflow/ refused the credentials (HTTP 401): check the user "
        "and password in tracking.uri, or MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD")
    # Without credentials in the URI, MLflow's own variables are used, as its client does.
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "lf")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", SECRET)
    check_tracking_uri(f"http://{host}/mlflow")
    with pytest.raises(TrackingError, match=r"^tracking server http://lf:\*\*\*@127\.0\.0\.1:9 does not answer") as info:
        check_tracking_uri(f"http://lf:{SECRET}@127.0.0.1:9", timeout_s=2)
    assert SECRET not in str(info.value)


def test_an_s3_endpoint_with_credentials_is_used_and_never_shown(tmp_path: Path, s3_bucket: str,
                                                                 moto_s3: str) -> None:
    endpoint = moto_s3.replace("http://", f"http://lf:{SECRET}@")
    store = open_store(s3_bucket, s3_endpoint_url=endpoint)
    store.check_writable()
    run = RunStore(store, tmp_path / "work").create(["cactus"], "tiny", {"store": {"s3_endpoint_url": endpoint}})
    assert run.state()["config"]["store"]["s3_endpoint_url"] == endpoint.replace(SECRET, "***")
    bucket, prefix = s3_bucket.removeprefix("s3://").split("/", 1)
    s3 = boto3.client("s3", endpoint_url=moto_s3)
    for obj in s3.list_objects_v2(Bucket=bucket, Prefix=prefix)["Contents"]:
        assert SECRET.encode() not in s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
    # An endpoint that does not answer: one line, without the password.
    dead = f"http://lf:{SECRET}@127.0.0.1:9"
    proc = subprocess.run([str(CLI), "run", "-t", "cactus", "--store", s3_bucket, "--home", str(tmp_path / "h"),
                           "--set", f"store.s3_endpoint_url={dead}"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert proc.stderr.startswith(f"error: store {s3_bucket} is not writable") and SECRET not in proc.stderr
    assert "lf:***@127.0.0.1:9" in proc.stderr


def test_commands_that_show_settings_show_no_credentials(tmp_path: Path) -> None:
    shown = subprocess.run([str(CLI), "config", "--set", f"crawl.redis_url=redis://:{SECRET}@127.0.0.1:6379/0"],
                           cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr
    assert "redis_url: redis://:***@127.0.0.1:6379/0" in shown.stdout and SECRET not in shown.stdout
    ui = subprocess.run([str(CLI), "ui", "--tracking-uri", f"http://lf:{SECRET}@127.0.0.1:5000"],
                        cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert ui.stdout.strip() == "the tracking store is a server already: open http://lf:***@127.0.0.1:5000"
