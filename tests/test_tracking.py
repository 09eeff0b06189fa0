"""MLflow tracking into a real SQLite database: parent + nested runs, stepped metrics, registry."""

from __future__ import annotations

from pathlib import Path

import pytest

from lora_factory.errors import TrackingError
from lora_factory.tracking import PARENT_TAG, Tracker, check_tracking_uri, flatten_params


def test_flatten_params() -> None:
    flat = flatten_params({"train": {"rank": 4, "modules": ["to_q"]}, "topics": "a"})
    assert flat == {"train.rank": "4", "train.modules": '["to_q"]', "topics": "a"}


def test_check_tracking_uri(tmp_path: Path) -> None:
    check_tracking_uri(f"sqlite:///{tmp_path}/sub/mlflow.db")
    assert (tmp_path / "sub").is_dir()
    with pytest.raises(TrackingError, match=r"http://127.0.0.1:9 does not answer"):
        check_tracking_uri("http://127.0.0.1:9", timeout_s=2)


def test_parent_nested_runs_metrics_and_registry(tmp_path: Path) -> None:
    tracker = Tracker(f"sqlite:///{tmp_path}/mlflow.db", "exp", tmp_path / "artifacts")
    parent = tracker.start_parent("run 1", tags={"lora_factory.run_id": "r1"})
    child = tracker.start_stage(parent, "train")
    tracker.log_params(child, {"train": {"rank": 4}})
    for step, loss in enumerate([0.5, 0.4, 0.3]):
        tracker.log_metrics(child, {"loss": loss, "nan": float("nan")}, step=step)
    lora = tmp_path / "lora"
    lora.mkdir()
    (lora / "pytorch_lora_weights.safetensors").write_bytes(b"weights")
    tracker.log_artifacts(child, lora, "lora")
    tracker.end(child)

    history = tracker.client.get_metric_history(child, "loss")
    assert [(m.step, m.value) for m in history] == [(0, 0.5), (1, 0.4), (2, 0.3)]
    assert "nan" not in tracker.client.get_run(child).data.metrics
    assert tracker.client.get_run(child).data.params["train.rank"] == "4"
    kids = tracker.children(parent)
    assert [k.info.run_id for k in kids] == [child]
    assert kids[0].data.tags[PARENT_TAG] == parent
    assert (tmp_path / "artifacts").is_dir()  # artifacts go where the factory says, not ./mlruns

    v1 = tracker.register("m", child, "lora", tags={"clip_t_lora": "0.3"})
    tracker.set_alias("m", "candidate", v1)
    v2 = tracker.register("m", child, "lora")
    assert (v1, v2) == ("1", "2")
    assert tracker.alias_version("m", "candidate") == "1"
    assert tracker.alias_version("m", "champion") is None
    # A second Tracker on the same DB finds the experiment instead of creating another.
    again = Tracker(f"sqlite:///{tmp_path}/mlflow.db", "exp", tmp_path / "artifacts")
    assert again.experiment_id == tracker.experiment_id


def test_a_reopened_run_records_changed_params_as_tags(tmp_path: Path) -> None:
    tracker = Tracker(f"sqlite:///{tmp_path}/mlflow.db", "exp")
    run = tracker.start_stage(tracker.start_parent("p"), "curate")
    tracker.log_params(run, {"curate": {"min_side": 100000, "exact_dedup": True}})
    tracker.end(run, "FAILED")
    tracker.reopen(run)
    tracker.log_params(run, {"curate": {"min_side": 64, "exact_dedup": True}, "extra": 1})
    data = tracker.client.get_run(run).data
    assert data.params["curate.min_side"] == "100000"  # what the failed attempt ran with
    assert data.tags["resumed.curate.min_side"] == "64"
    assert data.params["extra"] == "1" and "resumed.curate.exact_dedup" not in data.tags


def test_a_moved_home_still_opens_its_runs_and_artifacts(tmp_path: Path) -> None:
    """MLflow records absolute artefact URIs; a home folder copied elsewhere (another machine)
    must still open its runs' artefacts and registered versions."""
    import shutil

    old = tmp_path / "old" / "home"
    tracker = Tracker(f"sqlite:///{old}/mlflow.db", "exp", old / "mlartifacts")
    run = tracker.start_parent("p")
    lora = tmp_path / "lora"
    lora.mkdir()
    (lora / "weights.safetensors").write_bytes(b"w")
    tracker.log_artifacts(run, lora, "lora")
    version = tracker.register("m", run, "lora")
    new = tmp_path / "elsewhere" / "home"
    shutil.copytree(old, new)
    shutil.rmtree(old)

    moved = Tracker(f"sqlite:///{new}/mlflow.db", "exp", new / "mlartifacts")
    assert moved.experiment_id == tracker.experiment_id
    assert moved.artifact_uri(run).startswith((new / "mlartifacts").as_uri())
    got = moved.client.download_artifacts(run, "lora/weights.safetensors", str(tmp_path))
    assert Path(got).read_bytes() == b"w"
    assert moved.client.get_model_version("m", version).run_id == run
    # A database shared by several homes (not inside this one) is never rewritten.
    shared = Tracker(f"sqlite:///{new}/mlflow.db", "exp", tmp_path / "other-home" / "mlartifacts")
    assert shared.artifact_uri(run).startswith((new / "mlartifacts").as_uri())
