"""Learning from past runs: planted factory runs in a real SQLite MLflow store, logged the way the
tune and evaluate stages log them, shift the recommendation towards the better-scoring configs."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from lora_factory.tracking import Tracker
from tasks.tune import tracking_record
from training.tuner import TuneRequest, TuneStats, family_row, load_history, markdown, recommend
from training.tuner.history import SCORE_METRIC

TARGET = TuneStats(num_images=40, caption_coverage=0.9, words_mean=12.0, text_diversity=0.6, visual_diversity=0.35,
                   short_side_median=1024.0, domain="photo")


def plant(tracker: Tracker, run_id: str, stats: TuneStats, family: str, score: float | None,
          rank: int, learning_rate: float, max_steps: int) -> str:
    """A finished factory run: a parent with a tune run (its choices pinned to the given values,
    logged by the tune stage's own record) and, when scored, an evaluate run."""
    from lora_factory.config import TrainConfig

    parent = tracker.start_parent(run_id, tags={"lora_factory.run_id": run_id})
    base = TrainConfig(rank=rank, learning_rate=learning_rate, max_steps=max_steps)
    rec = recommend(TuneRequest(stats, family_row(family), base=base,
                                pinned=frozenset({"rank", "learning_rate", "max_steps"})))
    params, metrics = tracking_record(rec)
    tune = tracker.start_stage(parent, "tune", tags={"lora_factory.run_id": run_id})
    tracker.log_params(tune, params)
    tracker.log_metrics(tune, metrics)
    tracker.end(tune)
    if score is not None:
        ev = tracker.start_stage(parent, "evaluate", tags={"lora_factory.run_id": run_id})
        tracker.log_metrics(ev, {SCORE_METRIC: score, "clip_t_lora": 0.3 + score, "clip_t_base": 0.3})
        tracker.end(ev)
    tracker.end(parent)
    return parent


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    root = tmp_path_factory.mktemp("history")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    tracker = Tracker(uri, "lora-factory", root / "mlartifacts")
    near = lambda n, d: replace(TARGET, num_images=n, text_diversity=d)  # noqa: E731
    parents = {
        "best": plant(tracker, "run-best", near(44, 0.62), "sd15", 0.050, 32, 2e-4, 1500),
        "good": plant(tracker, "run-good", near(36, 0.58), "sd15", 0.040, 32, 2e-4, 1200),
        "worst": plant(tracker, "run-worst", near(40, 0.61), "sd15", -0.010, 8, 5e-5, 400),
        # Not evidence: a very different dataset, an unscored run, another family.
        "far": plant(tracker, "run-far", replace(TARGET, num_images=5000, text_diversity=0.95,
                                                 visual_diversity=0.7), "sd15", 0.200, 128, 1e-3, 6000),
        "unscored": plant(tracker, "run-unscored", near(40, 0.6), "sd15", None, 4, 1e-5, 100),
        "other-family": plant(tracker, "run-sdxl", near(40, 0.6), "sdxl", 0.300, 128, 1e-3, 6000),
    }
    return {"uri": uri, "parents": parents}


def test_history_reads_back_the_scored_runs_of_the_family(store: dict) -> None:
    runs = load_history(store["uri"], "lora-factory", "sd15")
    assert [r.run_id for r in runs] == ["run-best", "run-far", "run-good", "run-worst"]
    best = runs[0]
    assert best.values == {"rank": 32, "learning_rate": 2e-4, "max_steps": 1500}
    assert best.score == pytest.approx(0.05) and best.task_type == "subject"
    assert best.mlflow_run_id == store["parents"]["best"]
    assert best.features["num_images"] == 44 and best.features["text_diversity"] == pytest.approx(0.62)
    # The run being tuned is never its own evidence.
    assert "run-best" not in [r.run_id for r in load_history(store["uri"], "lora-factory", "sd15",
                                                             exclude_parent=store["parents"]["best"])]
    assert load_history(store["uri"], "no-such-experiment", "sd15") == []


def test_similar_better_scoring_runs_shift_the_recommendation_and_are_cited(store: dict) -> None:
    history = load_history(store["uri"], "lora-factory", "sd15")
    prior = recommend(TuneRequest(TARGET, family_row("sd15")))
    learned = recommend(TuneRequest(TARGET, family_row("sd15"), history=history))
    p, c = prior.config, learned.config
    assert (p.rank, p.learning_rate, p.max_steps) == (16, 1e-4, 750)
    # Towards rank 32 / lr 2e-4 / 1200-1500 steps (best and good), away from the worst run's.
    assert c.rank == 32 and 1e-4 < c.learning_rate <= 2e-4 and 750 < c.max_steps <= 1500
    assert c.alpha == c.rank * 0.5  # the rest follows the shifted rank
    for key in ("rank", "learning_rate", "max_steps"):
        assert learned.choices[key].source == "history"
        assert "run-best (+0.050)" in learned.choices[key].why and "run-good (+0.040)" in learned.choices[key].why
    cited = {e.run.run_id: e for e in learned.shift.evidence}
    assert set(cited) == {"run-best", "run-good", "run-worst"}  # not the far, unscored or sdxl runs
    assert cited["run-worst"].weight == 0 and cited["run-best"].weight > 0
    text = markdown(learned)
    assert "| run-best | " + store["parents"]["best"] in text and "+0.0500" in text
    assert "run-far" not in text and "run-unscored" not in text


def test_pinned_values_are_not_moved_by_history(store: dict) -> None:
    history = load_history(store["uri"], "lora-factory", "sd15")
    from lora_factory.config import TrainConfig

    rec = recommend(TuneRequest(TARGET, family_row("sd15"), base=TrainConfig(rank=8), pinned=frozenset({"rank"}),
                                history=history))
    assert rec.config.rank == 8 and rec.choices["rank"].source == "pinned"
    assert rec.choices["learning_rate"].source == "history"


def test_a_lone_bad_run_or_no_similar_run_leaves_the_prior(store: dict) -> None:
    history = load_history(store["uri"], "lora-factory", "sd15")
    worst = [r for r in history if r.run_id == "run-worst"]
    prior = recommend(TuneRequest(TARGET, family_row("sd15"))).config
    alone = recommend(TuneRequest(TARGET, family_row("sd15"), history=worst))
    assert alone.config == prior and alone.shift.strength == 0
    assert "give no reason to change" in markdown(alone) and "| run-worst |" in markdown(alone)
    elsewhere = replace(TARGET, num_images=3, text_diversity=0.1, visual_diversity=0.05)
    none_near = recommend(TuneRequest(elsewhere, family_row("sd15"), history=history))
    assert none_near.shift.evidence == [] and "none had a similar dataset" in markdown(none_near)
    assert none_near.config == recommend(TuneRequest(elsewhere, family_row("sd15"))).config


def test_a_missing_tracking_store_is_no_history_and_is_not_created(tmp_path: Path) -> None:
    db = tmp_path / "nothing" / "mlflow.db"
    assert load_history(f"sqlite:///{db}", "lora-factory", "sd15") == []
    assert not db.exists()


def test_the_sqlite_fast_path_and_the_mlflow_api_agree(store: dict) -> None:
    """load_history reads a SQLite store's tables directly (1,000 runs in milliseconds); it must
    see exactly what MLflow's own search sees, deleted runs excluded."""
    from mlflow.tracking import MlflowClient

    from lora_factory.tracking import sqlite_path
    from training.tuner.history import _client_history, _sqlite_history

    def norm(rows: list) -> list:
        return sorted((rid, parent, {k: v for k, v in params.items() if k == "task_type" or k.startswith("recommended.")},
                       {k: v for k, v in metrics.items() if k.startswith("feature.")}, score)
                      for rid, parent, params, metrics, score in rows)

    db = sqlite_path(store["uri"])
    fast, api = _sqlite_history(db, "lora-factory", "sd15"), _client_history(store["uri"], "lora-factory", "sd15")
    assert norm(fast) == norm(api) and len(fast) == 4
    client = MlflowClient(store["uri"])
    client.delete_run(store["parents"]["good"])  # a deleted factory run: its stage runs go too
    for child in client.search_runs([client.get_run(store["parents"]["good"]).info.experiment_id],
                                    f"tags.`mlflow.parentRunId` = '{store['parents']['good']}'"):
        client.delete_run(child.info.run_id)
    try:
        assert norm(_sqlite_history(db, "lora-factory", "sd15")) == norm(
            _client_history(store["uri"], "lora-factory", "sd15"))
        assert "run-good" not in [r.run_id for r in load_history(store["uri"], "lora-factory", "sd15")]
    finally:
        for run in [store["parents"]["good"]] + [c.info.run_id for c in client.search_runs(
                [client.get_run(store["parents"]["good"]).info.experiment_id],
                f"tags.`mlflow.parentRunId` = '{store['parents']['good']}'", run_view_type=3)]:
            client.restore_run(run)


def test_prodigy_runs_do_not_vote_on_an_adamw_learning_rate() -> None:
    from training.tuner import PastRun

    prodigy = PastRun("run-prodigy", "p1", "subject", TARGET.features(),
                      {"rank": 32, "learning_rate": 1.0, "max_steps": 1500}, score=0.05, optimizer="prodigy")
    adamw = PastRun("run-adamw", "p2", "subject", TARGET.features(),
                    {"rank": 16, "learning_rate": 1e-4, "max_steps": 750}, score=0.01, optimizer="adamw8bit")
    rec = recommend(TuneRequest(TARGET, family_row("sd15"), history=[prodigy, adamw]))
    assert rec.config.optimizer == "adamw8bit" and rec.config.learning_rate == 1e-4  # only the AdamW run votes
    assert rec.config.rank == 32  # rank and steps still learn from the Prodigy run


# -- the last rejection's suggestion ---------------------------------------------------------------
def deploy_run(tracker: Tracker, parent: str, run_id: str, concept: str, verdict: str, start: int,
               changes: dict[str, float] | None = None) -> str:
    """A deploy stage run as tasks/deploy tags it (verdict, concept, the suggestion's JSON)."""
    import json

    from deploy.suggest import SUGGESTION_TAG

    tags = {"mlflow.parentRunId": parent, "lora_factory.stage": "deploy", "lora_factory.run_id": run_id,
            "verdict": verdict, "concept": concept}
    if changes:
        tags[SUGGESTION_TAG] = json.dumps({"changes": changes, "why": ["the LoRA barely moved"], "text": "..."})
    run = tracker.client.create_run(tracker.experiment_id, start_time=start, run_name="deploy", tags=tags)
    tracker.end(run.info.run_id)
    return run.info.run_id


def test_the_next_run_applies_the_last_rejections_suggestion(store: dict) -> None:
    from training.tuner.suggestion import load_suggestion

    uri, parents = store["uri"], store["parents"]
    tracker = Tracker(uri, "lora-factory")
    t0 = 1_700_000_000_000
    deploy_run(tracker, parents["good"], "run-good", "lighthouse", "rejected", t0, {"max_steps": 1.5, "rank": 2.0})
    newest = deploy_run(tracker, parents["best"], "run-best", "lighthouse", "rejected", t0 + 10,
                        {"max_steps": 1.5, "rank": 2.0, "more_data": 1.5})
    deploy_run(tracker, parents["worst"], "run-worst", "sailboat", "rejected", t0 + 20, {"max_steps": 0.7})
    deploy_run(tracker, parents["far"], "run-far", "sailboat", "promoted", t0 + 30)
    found = load_suggestion(uri, "lora-factory", "lighthouse")
    assert found is not None and (found.run_id, found.mlflow_run_id) == ("run-best", newest)
    assert found.values == {"max_steps": 1500, "rank": 32, "learning_rate": 2e-4}  # what run-best trained with
    assert load_suggestion(uri, "lora-factory", "sailboat") is None  # its newest deploy promoted
    assert load_suggestion(uri, "lora-factory", "lighthouse", exclude_parent=parents["best"]).run_id == "run-good"
    assert load_suggestion(uri, "lora-factory", "no-such-concept") is None

    rec = recommend(TuneRequest(TARGET, family_row("sd15"), suggestion=found))
    assert rec.config.max_steps == 2250 and rec.config.rank == 64 and rec.config.alpha == 32  # alpha follows
    for key in ("max_steps", "rank"):
        assert rec.choices[key].source == "suggestion" and "run run-best was rejected" in rec.choices[key].why
    text = markdown(rec)
    assert "## Last rejection" in text and "`max_steps` 1500 -> 2250" in text and "more data x1.5" in text
    assert "| `max_steps` | `2250` | last rejection |" in text
    from lora_factory.config import TrainConfig

    pinned = recommend(TuneRequest(TARGET, family_row("sd15"), base=TrainConfig(max_steps=300),
                                   pinned=frozenset({"max_steps"}), suggestion=found))
    assert pinned.config.max_steps == 300 and "`max_steps` x1.5 (pinned)" in markdown(pinned)


def test_the_tune_stage_looks_up_its_concepts_suggestion(store: dict) -> None:
    from lora_factory.profiles import load_config
    from tasks.tune import last_suggestion

    tracker = Tracker(store["uri"], "lora-factory")
    deploy_run(tracker, store["parents"]["good"], "run-good", "stage-concept", "rejected", 1_700_000_100_000,
               {"learning_rate": 0.5})
    cfg = load_config("tiny", {"tracking.uri": store["uri"], "tune.strategy": "auto"}, environ={})
    found = last_suggestion(cfg, ["stage-concept"], None)
    assert found is not None and found.changes == {"learning_rate": 0.5}
    rec = recommend(TuneRequest(TARGET, family_row("sd15"), suggestion=found))
    assert tracking_record(rec)[0]["suggestion_from"] == "run-good"
    assert last_suggestion(cfg.model_copy(update={"deploy": cfg.deploy.model_copy(update={"concept": "other"})}),
                           ["stage-concept"], None) is None  # deploy.concept names the concept
    off = load_config("tiny", {"tracking.uri": store["uri"], "tune.strategy": "auto", "tune.apply_suggestion": False},
                      environ={})
    assert last_suggestion(off, ["stage-concept"], None) is None
