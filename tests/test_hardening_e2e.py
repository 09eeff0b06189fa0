"""A whole tiny run with topics that used to crash it and credentials that used to leak
(issue 10, items 1, 5, 11), through the real CLI.

``-t "rock & roll,🚀 rocket"`` tracked on a real MLflow server reached as
``http://lf:<secret>@127.0.0.1:<port>`` (MLflow takes the credentials as HTTP basic auth), with
credentials in ``store.s3_endpoint_url`` too. The run fails at curation (a bad setting), a
killed stage's staging folder is planted, and the run is resumed with the setting fixed and the
credentials given again (run.json does not keep them). Then: the run finished with the topics
verbatim; MLflow names derived from them are sanitised; the leftover staging is gone; both
Prefect flow runs carry the topics in their names; and the secret is nowhere in the run
directory, the home, the MLflow server's database and artefacts, Prefect's database, or
anything the commands printed.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from lora_factory.names import topic_key

CLI = Path(sys.executable).parent / "lora-factory"
TOPICS = ["rock & roll", "🚀 rocket"]
STAGES = ("crawl", "curate", "label", "tune", "train", "evaluate", "deploy")

pytestmark = pytest.mark.e2e


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """``mlflow server`` on loopback with its own SQLite database; yields (host:port, its folder)."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    with open(root / "server.log", "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{root}/server.db",
             "--default-artifact-root", (root / "artifacts").as_uri(), "--host", "127.0.0.1",
             "--port", str(port), "--workers", "1"],
            stdout=log, stderr=subprocess.STDOUT, cwd=root)
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, (root / "server.log").read_text()[-3000:]
            time.sleep(0.5)
        yield f"127.0.0.1:{port}", root
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(CLI), *args], cwd=cwd, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def odd_run(tmp_path_factory: pytest.TempPathFactory, mlflow_server: tuple[str, Path]) -> dict:
    host, server_root = mlflow_server
    tmp = tmp_path_factory.mktemp("odd-run")
    home = tmp / "home"
    secret = f"pw-{uuid.uuid4().hex}"
    tracking = f"http://lf:{secret}@{host}"
    s3 = f"http://lf:{secret}@127.0.0.1:9"
    redis = f"redis://:{secret}@127.0.0.1:6379/0"  # the local Redis accepts any password from redis-py
    common = ["--home", str(home), "--tracking-uri", tracking, "--set", f"store.s3_endpoint_url={s3}",
              "--set", f"crawl.redis_url={redis}", "--set", "train.max_steps=4"]
    failed = run_cli("run", "-t", ",".join(TOPICS), *common, "--set", "curate.min_text_topic=null",
                     "--set", "curate.min_side=100000", cwd=tmp)
    runs = sorted((home / "runs").iterdir()) if (home / "runs").is_dir() else []
    assert len(runs) == 1, failed.stderr[-3000:]
    run_dir = runs[0]
    leftover = run_dir / ".staging" / "train-deadbeef"  # what a SIGKILLed stage leaves
    leftover.mkdir(parents=True)
    (leftover / "checkpoint.bin").write_bytes(b"\0" * 64)
    forgot = run_cli("run", "--resume", run_dir.name, "--home", str(home), cwd=tmp)
    resumed = run_cli("run", "--resume", run_dir.name, *common, "--set", "curate.min_side=64", cwd=tmp)
    listing = run_cli("runs", "--home", str(home), cwd=tmp)
    return {"home": home, "run_dir": run_dir, "secret": secret, "tracking": tracking, "server": server_root,
            "procs": {"failed": failed, "forgot": forgot, "resumed": resumed, "runs": listing}}


def test_the_run_fails_at_curation_then_resumes_to_the_end(odd_run: dict) -> None:
    failed, resumed = odd_run["procs"]["failed"], odd_run["procs"]["resumed"]
    assert failed.returncode == 2, failed.stderr[-3000:]
    errors = [x for x in failed.stderr.splitlines() if x.startswith("error:")]
    assert len(errors) == 1 and "no images left after curation" in errors[0]
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    state = json.loads((odd_run["run_dir"] / "run.json").read_text())
    assert state["topics"] == TOPICS and state["status"] == "done"
    assert all(state["stages"][s]["status"] == "done" for s in STAGES)
    assert not (odd_run["run_dir"] / ".staging").exists()
    assert f"{odd_run['run_dir'].name}  done        rock & roll, 🚀 rocket  [crawl:done" in odd_run["procs"]["runs"].stdout


def test_a_resume_without_the_credentials_asks_for_them_in_one_line(odd_run: dict) -> None:
    forgot = odd_run["procs"]["forgot"]
    assert forgot.returncode == 2
    assert forgot.stderr.strip().splitlines() == [
        f"error: run {odd_run['run_dir'].name} was started with credentials in crawl.redis_url "
        "(redis://:***@127.0.0.1:6379/0), store.s3_endpoint_url "
        "(http://lf:***@127.0.0.1:9), tracking.uri (http://lf:***@" + odd_run["tracking"].rsplit("@", 1)[1]
        + "); run.json does not keep them: give the setting again (--set crawl.redis_url=... or "
        "LORA_FACTORY_CRAWL__REDIS_URL)"]


def test_mlflow_names_from_topics_are_sanitised_and_values_verbatim(odd_run: dict) -> None:
    from mlflow.tracking import MlflowClient

    state = json.loads((odd_run["run_dir"] / "run.json").read_text())
    client = MlflowClient(odd_run["tracking"])
    parent = client.get_run(state["mlflow_parent_run_id"])
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["lora_factory.topics"] == "rock & roll, 🚀 rocket"
    assert json.loads(parent.data.params["topics"]) == TOPICS
    crawl = client.get_run(state["stages"]["crawl"]["mlflow_run_id"])
    per_topic = json.loads((odd_run["run_dir"] / "crawl" / "crawl_stats.json").read_text())["images_per_topic"]
    assert per_topic and set(per_topic) <= set(TOPICS)
    for topic, count in per_topic.items():
        assert crawl.data.metrics[f"images_per_topic.{topic_key(topic)}"] == count


def test_both_flow_runs_are_named_after_the_topics(odd_run: dict) -> None:
    db = Path(os.environ["PREFECT_HOME"]) / "prefect.db"
    with sqlite3.connect(db) as conn:
        names = [row[0] for row in conn.execute("select name from flow_run where name like '%rock & roll%'")]
    assert names == ["tiny: rock & roll, 🚀 rocket"] * 2


def test_the_secret_is_nowhere(odd_run: dict) -> None:
    secret = odd_run["secret"]
    for name, proc in odd_run["procs"].items():
        assert secret not in proc.stdout + proc.stderr, name
    assert "lf:***@" in odd_run["procs"]["resumed"].stdout  # the summary shows where, not how
    places = [odd_run["home"], odd_run["server"], Path(os.environ["PREFECT_HOME"])]
    files = [p for place in places for p in place.rglob("*") if p.is_file()]
    assert any(p.name == "server.db" for p in files) and any(p.name == "run.json" for p in files)
    leaks = [str(p) for p in files if secret.encode() in p.read_bytes()]
    assert leaks == []
