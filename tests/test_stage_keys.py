"""Stage cache keys: a re-run recomputes only what its changes reach (``lora_factory.stage_keys``).

The decisions are tested on run states built here, with each simulated stage writing outputs
whose digest follows from its key (as real outputs follow from their inputs and settings); the
end-to-end tests (test_e2e, test_cache_e2e) run the real stages through the flow."""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

from lora_factory import catalog
from lora_factory.profiles import load_config
from lora_factory.runstore import DONE, FAILED, PENDING
from lora_factory.stage_keys import (
    LEGACY_EXTERNAL_HIT,
    LEGACY_HIT,
    all_hits,
    code_digest,
    decide,
    key_of,
    key_parts,
    path_digest,
)


def _no_folder(stage: str) -> Path:
    raise AssertionError(f"{stage}: digests are recorded, no stage folder should be read")


def fresh_state(topics: list[str] | None = None) -> dict[str, Any]:
    return {"topics": topics or ["lighthouse"], "stages": {s: {"status": PENDING} for s in catalog.STAGES}}


def run_all(state: dict[str, Any], config: dict[str, Any], same_outputs: bool = False) -> list[str]:
    """The flow's loop: each stage that is not a hit 'runs' and records its key and outputs."""
    ran = []
    for stage in catalog.STAGES:
        if decide(state, stage, config, _no_folder).hit:
            continue
        parts = key_parts(state, stage, config, _no_folder)
        produced = "same" if same_outputs else key_of(parts)
        state["stages"][stage] = {"status": DONE, "key": key_of(parts), "key_parts": parts,
                                  "outputs": {o.key: f"{o.key}:{produced}" for o in catalog.spec(stage).writes}}
        ran.append(stage)
    return ran


def config(**overrides: Any) -> dict[str, Any]:
    return load_config("tiny", overrides, environ={}).model_dump(mode="json")


def test_a_first_run_runs_everything_and_an_unchanged_rerun_nothing() -> None:
    state, cfg = fresh_state(), config()
    assert run_all(state, cfg) == list(catalog.STAGES)
    assert run_all(state, cfg) == []
    assert decide(state, "train", cfg, _no_folder).reason == "inputs, settings and code unchanged"


def test_a_changed_setting_reruns_its_stage_and_what_reads_its_outputs() -> None:
    state = fresh_state()
    run_all(state, config())
    assert run_all(state, config(**{"train.rank": 8})) == ["tune", "train", "evaluate", "deploy"]
    assert run_all(state, config(**{"train.rank": 8, "evaluate.num_inference_steps": 3})) == ["evaluate", "deploy"]
    assert run_all(state, config(**{"train.rank": 8, "evaluate.num_inference_steps": 3, "curate.min_side": 48}))[:2] == [
        "curate", "label"]


def test_all_hits_decides_a_rerun_with_nothing_to_do_before_any_flow() -> None:
    """The CLI skips the flow only on all_hits: one changed setting, or an unfinished stage, is None."""
    state, cfg = fresh_state(), config()
    assert all_hits(state, cfg, _no_folder) is None
    run_all(state, cfg)
    decisions = all_hits(state, cfg, _no_folder)
    assert decisions is not None and [d.stage for d in decisions] == list(catalog.STAGES)
    assert all(d.hit and d.reason == "inputs, settings and code unchanged" for d in decisions)
    assert all_hits(state, config(**{"evaluate.num_inference_steps": 3}), _no_folder) is None
    state["stages"]["deploy"]["status"] = FAILED
    assert all_hits(state, cfg, _no_folder) is None


def test_the_reason_names_what_changed() -> None:
    state = fresh_state()
    run_all(state, config())
    miss = decide(state, "tune", config(**{"train.rank": 8}), _no_folder)
    assert not miss.hit and miss.reason == "changed: settings"
    state["stages"]["curate"]["outputs"]["curate.stats"] = "other"
    assert decide(state, "tune", config(), _no_folder).reason == "changed: input curate.stats"


def test_an_upstream_rerun_that_writes_the_same_bytes_does_not_invalidate_its_readers() -> None:
    state = fresh_state()
    run_all(state, config(), same_outputs=True)
    assert run_all(state, config(**{"crawl.max_pages": 7}), same_outputs=True) == ["crawl"]


def test_other_topics_recrawl_and_credentials_are_not_a_change() -> None:
    state, cfg = fresh_state(), config()
    run_all(state, cfg)
    with_password = config(**{"crawl.redis_url": "redis://:s3cret@127.0.0.1:6379/0"})
    other_password = config(**{"crawl.redis_url": "redis://:changed@127.0.0.1:6379/0"})
    run_all(state, with_password)
    assert run_all(state, other_password) == []
    state["topics"] = ["rock & roll"]
    assert run_all(state, other_password) == list(catalog.STAGES)


def test_an_edited_review_sheet_is_a_change_even_under_the_same_name(tmp_path: Path) -> None:
    sheet = tmp_path / "reviewed.csv"
    sheet.write_text("item_id,caption\n1,a lighthouse\n")
    state, cfg = fresh_state(), config(**{"label.review_file": str(sheet)})
    run_all(state, cfg)
    assert run_all(state, cfg) == []
    sheet.write_text("item_id,caption\n1,a lighthouse at night\n")
    assert run_all(state, cfg) == ["label", "tune", "train", "evaluate", "deploy"]


def test_unfinished_stages_always_run() -> None:
    state, cfg = fresh_state(), config()
    run_all(state, cfg)
    state["stages"]["train"]["status"] = FAILED
    failed = decide(state, "train", cfg, _no_folder)
    assert not failed.hit and failed.reason.startswith("was failed")
    assert run_all(state, cfg) == ["train"]  # the same weights: readers are hits
    legacy = copy.deepcopy(state)
    for entry in legacy["stages"].values():
        entry.pop("key_parts")
    assert decide(legacy, "curate", cfg, _no_folder).hit  # finished before keys existed: kept


def test_code_digests_follow_the_source(tmp_path: Path, monkeypatch) -> None:
    package = tmp_path / "lf_probe_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "step.py").write_text("VALUE = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    before = code_digest(("lf_probe_pkg",))
    (package / "step.py").write_text("VALUE = 2\n")
    code_digest.cache_clear()
    assert code_digest(("lf_probe_pkg",)) != before
    assert code_digest(("tasks.curate",)) != code_digest(("tasks.label",))
    sys.modules.pop("lf_probe_pkg", None)


def test_folder_digests_see_contents_and_names(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.txt").write_text("1")
    first = path_digest(tmp_path / "a")
    (tmp_path / "a" / "x.txt").write_text("2")
    second = path_digest(tmp_path / "a")
    (tmp_path / "a" / "x.txt").rename(tmp_path / "a" / "y.txt")
    assert len({first, second, path_digest(tmp_path / "a")}) == 3


def test_a_stage_kept_from_before_keys_is_keyed_from_then_on() -> None:
    """Kept unchecked once (nothing says what it was made from), it says so in its reason; with
    today's key recorded, a later change re-runs it instead of it being kept forever."""
    state, cfg = fresh_state(), config()
    run_all(state, cfg)
    for entry in state["stages"].values():
        del entry["key"], entry["key_parts"]
    decisions = all_hits(state, cfg, _no_folder)
    assert decisions is not None and {d.reason for d in decisions} == {LEGACY_HIT}
    assert decide(state, "train", config(**{"train.rank": 8}), _no_folder).hit  # nothing to compare with yet
    for d in decisions:
        d.record_in(state["stages"][d.stage])
    assert state["stages"]["train"]["cache"]["reason"] == LEGACY_HIT
    assert run_all(state, cfg) == []
    assert run_all(state, config(**{"train.rank": 8})) == ["tune", "train", "evaluate", "deploy"]


def test_a_moved_champion_reruns_deploy_alone(tmp_path: Path) -> None:
    """Deploy's key holds its concept's champion in a real MLflow registry (``StageSpec.external``):
    another run moving it is a miss for deploy alone that says so; moved back, a hit again."""
    from lora_factory.tracking import Tracker

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    state, cfg = fresh_state(), config(**{"tracking.uri": uri})
    assert run_all(state, cfg) == list(catalog.STAGES)
    assert state["stages"]["deploy"]["key_parts"]["external"] == {
        "registry.champion": {"model": "lighthouse", "alias": "champion", "version": None}}
    assert "external" not in state["stages"]["train"]["key_parts"]  # other stages' keys are as before
    assert not (tmp_path / "mlflow.db").exists()  # looking does not create a store
    tracker = Tracker(uri, "exp", tmp_path / "mlartifacts")
    other = tracker.start_parent("another run")
    v1 = tracker.register("lighthouse", other, "model")
    tracker.set_alias("lighthouse", "champion", v1)
    assert all_hits(state, cfg, _no_folder) is None
    moved = decide(state, "deploy", cfg, _no_folder)
    assert not moved.hit and moved.reason == f"the champion moved: lighthouse@champion from version none to {v1}"
    assert run_all(state, cfg) == ["deploy"]
    v2 = tracker.register("lighthouse", other, "model")
    tracker.set_alias("lighthouse", "champion", v2)
    both = decide(state, "deploy", config(**{"tracking.uri": uri, "deploy.gate.min_overall_score": 0.5}), _no_folder)
    assert both.reason == f"changed: settings, the champion moved: lighthouse@champion from version {v1} to {v2}"
    tracker.set_alias("lighthouse", "champion", v1)
    assert decide(state, "deploy", cfg, _no_folder).hit
    # a deploy finished before the champion was keyed is kept once, and keyed from then on
    entry = state["stages"]["deploy"]
    del entry["key_parts"]["external"]
    entry["key"] = key_of(entry["key_parts"])
    kept = decide(state, "deploy", cfg, _no_folder)
    assert kept.hit and kept.reason == LEGACY_EXTERNAL_HIT
    kept.record_in(entry)
    assert entry["key_parts"]["external"]["registry.champion"]["version"] == v1
    tracker.set_alias("lighthouse", "champion", v2)
    assert run_all(state, cfg) == ["deploy"]
    tracker.register("another-concept", other, "model")
    assert run_all(state, cfg) == []  # another concept's registry entries are not this run's input
