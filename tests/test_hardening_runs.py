"""Starting and resuming runs (issue 10, items 1, 5, 8, 11): what a resume cleans up and how it
is named, credentials that run.json does not keep, a run that tracking refused, damaged state."""

from __future__ import annotations

from pathlib import Path

import pytest

from lora_factory.errors import ConfigError, StoreError, TrackingError
from lora_factory.lifecycle import finish_run, resume_run, start_run
from lora_factory.profiles import env_var, load_config
from lora_factory.runlock import holder
from lora_factory.runstore import RunStore
from lora_factory.storage import open_store

TOPICS = ["rock & roll", "🚀 rocket"]


def _cfg(home: Path, **extra: object):  # noqa: ANN202 - a FactoryConfig
    return load_config("tiny", {"home": str(home), **extra})


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One home (and MLflow database) for the tests that keep its experiment as it is."""
    return tmp_path_factory.mktemp("runs") / "home"


def test_a_resume_clears_killed_stages_staging_and_is_named_after_the_runs_topics(home: Path) -> None:
    from flows.factory import run_name

    ref = start_run(_cfg(home), TOPICS)
    finish_run(ref, ok=False, error="killed")
    run_dir = home / "runs" / ref.run_id
    leftover = run_dir / ".staging" / "train-deadbeef"
    leftover.mkdir(parents=True)
    (leftover / "half.safetensors").write_bytes(b"\0" * 10)
    # What Prefect names the resumed flow run: the run's own topics, not the `topics` parameter.
    params = {"profile": "tiny", "topics": [], "resume_run_id": ref.run_id, "overrides": {"home": str(home)}}
    assert run_name(params) == "tiny: rock & roll, 🚀 rocket"
    assert run_name({**params, "resume_run_id": "20990101-000000-abcdef"}) == "tiny: resume 20990101-000000-abcdef"

    resumed = resume_run(_cfg(home), ref.run_id)
    assert not (run_dir / ".staging").exists()
    assert resumed.topics == TOPICS and holder(resumed.run_dir()) is not None
    finish_run(resumed, ok=True)
    assert holder(resumed.run_dir()) is None


def test_credentials_are_not_kept_and_must_be_given_again_to_resume(home: Path, monkeypatch) -> None:
    secret = "s3cr3t-Pw"
    redis = f"redis://:{secret}@127.0.0.1:6379/0"
    s3 = f"http://lf:{secret}@127.0.0.1:9000"
    ref = start_run(_cfg(home, **{"crawl.redis_url": redis, "store.s3_endpoint_url": s3}), ["cactus"])
    assert ref.config.crawl.redis_url == redis  # the run itself uses the real value
    finish_run(ref, ok=False, error=f"crawl failed talking to {redis}")
    run_json = (home / "runs" / ref.run_id / "run.json").read_text()
    assert secret not in run_json and "redis://:***@127.0.0.1:6379/0" in run_json
    assert secret not in (home / "mlflow.db").read_bytes().decode("utf-8", "replace")

    with pytest.raises(ConfigError) as info:
        resume_run(_cfg(home), ref.run_id)
    assert str(info.value) == (
        f"run {ref.run_id} was started with credentials in crawl.redis_url (redis://:***@127.0.0.1:6379/0), "
        "store.s3_endpoint_url (http://lf:***@127.0.0.1:9000); run.json does not keep them: give the "
        f"setting again (--set crawl.redis_url=... or {env_var('crawl.redis_url')})"
    )
    assert holder(ref.run_dir()) is None  # the failed resume let go of the run
    monkeypatch.setenv(env_var("crawl.redis_url"), redis)
    monkeypatch.setenv(env_var("store.s3_endpoint_url"), s3)
    resumed = resume_run(_cfg(home), ref.run_id)
    assert (resumed.config.crawl.redis_url, resumed.config.store.s3_endpoint_url) == (redis, s3)
    finish_run(resumed, ok=True)
    assert secret not in (home / "runs" / ref.run_id / "run.json").read_text()


def test_a_run_tracking_refuses_is_recorded_as_failed_not_running(tmp_path: Path) -> None:
    """Tracking can refuse a run after its folder exists (here: the experiment was deleted in
    the MLflow UI). The run says failed, with the reason, and nothing holds it."""
    home = tmp_path / "home"
    first = start_run(_cfg(home), ["cactus"])
    finish_run(first, ok=True)
    tracker = first.tracker()
    tracker.client.delete_experiment(tracker.experiment_id)
    with pytest.raises(TrackingError) as info:
        start_run(_cfg(home), ["cactus"])
    assert "refused to start the run" in str(info.value) and "\n" not in str(info.value)
    runs = RunStore(open_store(str(home)), home / "work")
    failed = [runs.open(r) for r in runs.list() if r != first.run_id]
    assert len(failed) == 1
    state = failed[0].state()
    assert state["status"] == "failed" and "active" in state["error"]
    assert holder(failed[0]) is None


@pytest.mark.parametrize(
    ("content", "problem"),
    [(b'{"run_id": "r", "topics": ["a"], "conf', "is not valid JSON (cut short by a crash?)"),
     (b"{}", "lacks run_id, topics, config, stages"),
     (b"[1, 2]", "is not a JSON object"),
     (b'{"run_id": "r", "topics": "a", "config": {}, "stages": []}', "has a malformed topics, stages"),
     (b"\xff\xfe{}", "is not valid JSON (cut short by a crash?)")],
)
def test_a_damaged_run_json_is_one_line_naming_the_file(tmp_path: Path, content: bytes, problem: str) -> None:
    runs = RunStore(open_store(str(tmp_path)), tmp_path / "work")
    run = runs.create(["a"], "tiny", {})
    (tmp_path / "runs" / run.run_id / "run.json").write_bytes(content)
    with pytest.raises(StoreError) as info:
        runs.open(run.run_id).state()
    assert str(info.value) == (
        f"{tmp_path}/runs/{run.run_id}/run.json {problem}: run {run.run_id} cannot be read; restore that "
        "file from a backup, or move the run's folder away and start a new run"
    )


def test_resume_of_a_damaged_run_is_one_line(home: Path) -> None:
    ref = start_run(_cfg(home), ["cactus"])
    finish_run(ref, ok=False, error="x")
    path = home / "runs" / ref.run_id / "run.json"
    path.write_text(path.read_text()[:40])
    with pytest.raises(StoreError, match=r"run\.json is not valid JSON"):
        resume_run(_cfg(home), ref.run_id)
    assert holder(ref.run_dir()) is None
