"""The run store behaves the same on a local folder and on S3 (moto server on loopback)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lora_factory.errors import StoreError
from lora_factory.runstore import DONE, FAILED, PENDING, STAGES, RunStore
from lora_factory.storage import LocalStore, S3Store, open_store


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path):
    if request.param == "local":
        return open_store(str(tmp_path / "store"))
    bucket = request.getfixturevalue("s3_bucket")
    return open_store(bucket, s3_endpoint_url=request.getfixturevalue("moto_s3"))


def test_bytes_round_trip_and_listing(store) -> None:
    store.check_writable()
    store.write_bytes("runs/a/run.json", b"{}")
    store.write_bytes("runs/a/crawl/images/x.png", b"png")
    store.write_bytes("runs/b/run.json", b"[]")
    assert store.read_bytes("runs/a/crawl/images/x.png") == b"png"
    assert store.exists("runs/a/run.json") and not store.exists("runs/c/run.json")
    assert store.list("runs/a") == ["runs/a/crawl/images/x.png", "runs/a/run.json"]
    store.delete_prefix("runs/a")
    assert store.list("runs/a") == [] and store.list("runs") == ["runs/b/run.json"]
    with pytest.raises(StoreError, match="does not exist|cannot read"):
        store.read_bytes("runs/zzz")


def test_keys_cannot_escape_the_store(store) -> None:
    with pytest.raises(StoreError, match="outside the store"):
        store.write_bytes("../evil.txt", b"x")


def test_upload_replaces_a_folder_without_leftovers(store, tmp_path: Path) -> None:
    first = tmp_path / "v1"
    (first / "sub").mkdir(parents=True)
    (first / "keep.txt").write_text("1")
    (first / "sub" / "old.txt").write_text("old")
    store.upload_dir(first, "runs/r/stage")
    second = tmp_path / "v2"
    second.mkdir()
    (second / "keep.txt").write_text("2")
    store.upload_dir(second, "runs/r/stage")
    assert store.list("runs/r/stage") == ["runs/r/stage/keep.txt"]
    back = store.download_dir("runs/r/stage", tmp_path / "back")
    assert (back / "keep.txt").read_text() == "2"


def test_run_lifecycle_same_layout_on_every_store(store, tmp_path: Path) -> None:
    runs = RunStore(store, tmp_path / "work")
    run = runs.create(["lighthouse"], "tiny", {"seed": 1})
    assert runs.list() == [run.run_id]
    assert run.state()["stages"] == {s: {"status": PENDING} for s in STAGES}
    assert run.first_unfinished_stage() == "crawl"

    with run.stage_output("crawl") as out:
        (out / "items.parquet").write_bytes(b"parquet")
        (out / "images").mkdir()
        (out / "images" / "abc.png").write_bytes(b"img")
    run.set_stage("crawl", DONE, seconds=1.0)
    assert sorted(store.list(f"runs/{run.run_id}/crawl")) == [
        f"runs/{run.run_id}/crawl/images/abc.png",
        f"runs/{run.run_id}/crawl/items.parquet",
    ]
    assert (run.stage_path("crawl") / "images" / "abc.png").read_bytes() == b"img"
    assert run.first_unfinished_stage() == "curate"

    # A failing stage leaves the previous outputs as they were and nothing staged behind.
    with pytest.raises(RuntimeError), run.stage_output("crawl") as out:
        (out / "items.parquet").write_bytes(b"half")
        raise RuntimeError("crash")
    run.set_stage("crawl", FAILED, error="crash")
    assert store.read_bytes(f"runs/{run.run_id}/crawl/items.parquet") == b"parquet"
    assert not [k for k in store.list(f"runs/{run.run_id}") if ".staging" in k]
    state = runs.open(run.run_id).state()
    assert state["stages"]["crawl"]["status"] == FAILED
    assert [h["status"] for h in state["stages"]["crawl"]["history"]] == [DONE, FAILED]


def test_open_unknown_run_is_a_clear_error(store, tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="run 'nope' not found .* `lora-factory runs`"):
        RunStore(store, tmp_path / "work").open("nope")


def test_s3_remote_stage_is_downloaded_on_another_machine(s3_bucket: str, moto_s3: str, tmp_path: Path) -> None:
    """A second worker with an empty scratch folder reads a stage another worker committed."""
    store = open_store(s3_bucket, s3_endpoint_url=moto_s3)
    run = RunStore(store, tmp_path / "worker1").create(["t"], "tiny", {})
    with run.stage_output("label") as out:
        (out / "dataset").mkdir()
        (out / "dataset" / "a.txt").write_text("caption")
    other = RunStore(S3Store(s3_bucket, endpoint_url=moto_s3), tmp_path / "worker2").open(run.run_id)
    assert (other.stage_path("label") / "dataset" / "a.txt").read_text() == "caption"


def test_unwritable_stores_say_so(tmp_path: Path, moto_s3: str) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    os.chmod(ro, 0o500)
    try:
        if os.access(ro, os.W_OK):  # root ignores permissions: use a path under a file instead
            ro = tmp_path / "file"
            ro.write_text("x")
            ro = ro / "sub"
        with pytest.raises(StoreError, match="is not writable"):
            LocalStore(ro).check_writable()
    finally:
        os.chmod(tmp_path / "ro", 0o700)
    with pytest.raises(StoreError, match="s3://no-such-bucket.* is not writable"):
        S3Store("s3://no-such-bucket/x", endpoint_url=moto_s3).check_writable()
    with pytest.raises(StoreError, match="neither a folder nor an s3:// URL"):
        open_store("gs://bucket/x")


def test_scratch_survives_a_failed_attempt_and_is_cleared(store, tmp_path: Path) -> None:
    run = RunStore(store, tmp_path / "work").create(["t"], "tiny", {})
    scratch = run.scratch_dir("train")
    (scratch / "checkpoint-10").mkdir()
    with pytest.raises(RuntimeError), run.stage_output("train"):
        raise RuntimeError("killed")
    assert (run.scratch_dir("train") / "checkpoint-10").is_dir()
    run.clear_scratch("train")
    assert not (scratch / "checkpoint-10").exists()
    assert not [k for k in store.list(f"runs/{run.run_id}") if ".scratch" in k]
