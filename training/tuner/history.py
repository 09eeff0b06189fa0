"""Learning from every past run: similar datasets' best-evaluated configs shift the prior.

Every tune stage logs its dataset's features (metrics ``feature.*``), the model family and
task (params) and the config it chose (params ``recommended.*``) on its MLflow run; the
evaluate stage of the same factory run logs ``score_overall_score`` (its weighted overall score,
what the deploy gate compares with the champion). A past run is evidence when both are there. Runs whose evaluate stage
recorded no score (it failed, or never ran) do not vote; with no scored similar run the prior
stands alone, and the rationale says so.

Similarity is the distance between normalised features (fixed scales below, so it does not
depend on which runs happen to be in the store); a different task type adds 1. Of the
``k`` nearest runs within ``RADIUS``, each weighs ``exp(-d^2 / 2)`` times its relative score
among them (the best 1, the worst 0; a lone or tied run weighs in only if its score is
positive). ``rank``, ``learning_rate`` and ``max_steps`` move, in log space, towards the
weighted mean of those runs' values by ``n / (n + 1)`` where ``n`` is the sum of the distance
weights: one close run moves a value half-way, many close runs nearly all the way.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

SCORE_METRIC = "score_overall_score"
FEATURE_PREFIX = "feature."
VALUE_PREFIX = "recommended."
SHIFTED = ("rank", "learning_rate", "max_steps")
PARENT_TAG = "mlflow.parentRunId"
STAGE_TAG = "lora_factory.stage"
RUN_TAG = "lora_factory.run_id"
RADIUS = 2.0
# feature -> (transform, width of one unit of distance)
FEATURE_SCALES: dict[str, tuple[str, float]] = {
    "num_images": ("log2", 1.0),  # a factor 2 in size
    "caption_coverage": ("linear", 0.25),
    "words_mean": ("log2", 1.5),
    "text_diversity": ("linear", 0.1),
    "visual_diversity": ("linear", 0.1),
}


@dataclass(frozen=True)
class PastRun:
    """A finished factory run the tuner may learn from."""

    run_id: str  # the factory's run id
    mlflow_run_id: str  # its MLflow parent run
    task_type: str | None
    features: Mapping[str, float]
    values: Mapping[str, float]  # rank, learning_rate, max_steps it trained with
    score: float
    optimizer: str | None = None  # Prodigy's learning rate is a multiplier: not comparable


@dataclass(frozen=True)
class Evidence:
    run: PastRun
    distance: float
    weight: float


@dataclass(frozen=True)
class Shift:
    """What the history did: new values, the runs behind them, and how far they moved."""

    values: dict[str, float]
    evidence: list[Evidence]
    strength: float  # 0: the prior stands; towards 1: the runs' weighted values
    considered: int  # scored runs of this family in the store


def _coord(name: str, value: float) -> float:
    transform, width = FEATURE_SCALES[name]
    return (math.log2(max(value, 1e-9)) if transform == "log2" else value) / width


def distance(a: Mapping[str, float], b: Mapping[str, float], same_task: bool) -> float | None:
    """Euclidean distance over the features both have (None: none in common)."""
    common = [n for n in FEATURE_SCALES if n in a and n in b]
    if not common:
        return None
    squares = sum((_coord(n, a[n]) - _coord(n, b[n])) ** 2 for n in common)
    return math.sqrt(squares) + (0.0 if same_task else 1.0)


def nearest(features: Mapping[str, float], task: str, runs: Iterable[PastRun], k: int) -> list[tuple[PastRun, float]]:
    """The ``k`` nearest scored runs within ``RADIUS`` (ties broken by run id: deterministic)."""
    near = []
    for run in runs:
        d = distance(features, run.features, run.task_type == task)
        if d is not None and d <= RADIUS and all(key in run.values for key in SHIFTED):
            near.append((run, d))
    near.sort(key=lambda rd: (rd[1], rd[0].run_id))
    return near[:k]


def _quality(scores: list[float]) -> list[float]:
    lo, hi = min(scores), max(scores)
    if hi > lo:
        return [(s - lo) / (hi - lo) for s in scores]
    return [1.0 if s > 0 else 0.0 for s in scores]


def shift(values: Mapping[str, float], near: list[tuple[PastRun, float]], considered: int) -> Shift:
    """Move ``values`` (the keys of SHIFTED present) towards the better-scoring near runs."""
    if not near:
        return Shift(dict(values), [], 0.0, considered)
    kernel = [math.exp(-d * d / 2) for _, d in near]
    weights = [k * q for k, q in zip(kernel, _quality([r.score for r, _ in near]), strict=True)]
    evidence = [Evidence(r, d, w) for (r, d), w in zip(near, weights, strict=True)]
    total = sum(weights)
    if total <= 0:
        return Shift(dict(values), evidence, 0.0, considered)
    strength = sum(kernel) / (sum(kernel) + 1)
    out = dict(values)
    for key in SHIFTED:
        votes = [(r, w) for (r, _), w in zip(near, weights, strict=True)
                 if key != "learning_rate" or r.optimizer != "prodigy"]
        if key not in values or sum(w for _, w in votes) <= 0:
            continue
        target = sum(w * math.log(r.values[key]) for r, w in votes) / sum(w for _, w in votes)
        out[key] = math.exp(math.log(values[key]) + strength * (target - math.log(values[key])))
    return Shift(out, evidence, strength, considered)


# Reading the tracking store ----------------------------------------------------------------------

def _all_runs(client: Any, experiment_id: str, filter_string: str) -> list[Any]:
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], filter_string=filter_string, max_results=5000, page_token=token)
        runs += list(page)
        token = page.token
        if not token:
            return runs


def _past_run(run_id: str, parent: str, params: Mapping[str, str], metrics: Mapping[str, float],
              score: float) -> PastRun | None:
    try:
        values = {key: float(params[VALUE_PREFIX + key]) for key in SHIFTED}
    except (KeyError, ValueError):
        return None
    features = {k[len(FEATURE_PREFIX):]: float(v) for k, v in metrics.items() if k.startswith(FEATURE_PREFIX)}
    return PastRun(run_id=run_id or parent, mlflow_run_id=parent, task_type=params.get("task_type") or None,
                   features=features, values=values, score=score,
                   optimizer=params.get(VALUE_PREFIX + "optimizer"))


def _client_history(tracking_uri: str, experiment: str, family: str) -> list[tuple[str, str, dict, dict, float]]:
    """(factory run id, parent, params, metrics, score) through the MLflow API (any store)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    evals = _all_runs(client, exp.experiment_id,
                      f"tags.`{STAGE_TAG}` = 'evaluate' and attributes.status = 'FINISHED'")
    scores = {e.data.tags.get(PARENT_TAG): e.data.metrics[SCORE_METRIC] for e in evals
              if SCORE_METRIC in e.data.metrics}
    tunes = _all_runs(client, exp.experiment_id, f"tags.`{STAGE_TAG}` = 'tune' and params.family = '{family}'")
    return [(t.data.tags.get(RUN_TAG, ""), t.data.tags[PARENT_TAG], t.data.params, t.data.metrics,
             scores[t.data.tags[PARENT_TAG]]) for t in tunes if t.data.tags.get(PARENT_TAG) in scores]


# The same question asked of a SQLite store's tables directly: MLflow's API builds an ORM object
# per param, metric and tag of every run, which takes seconds for 1,000 runs; three queries take
# milliseconds. tests/test_tuner_history.py checks both paths agree.
_SQL_TUNES = """
    SELECT r.run_uuid, par.value, COALESCE(rid.value, '') FROM runs r
    JOIN experiments e ON e.experiment_id = r.experiment_id AND e.name = :experiment
    JOIN tags st ON st.run_uuid = r.run_uuid AND st.key = :stage_tag AND st.value = 'tune'
    JOIN params fam ON fam.run_uuid = r.run_uuid AND fam.key = 'family' AND fam.value = :family
    JOIN tags par ON par.run_uuid = r.run_uuid AND par.key = :parent_tag
    LEFT JOIN tags rid ON rid.run_uuid = r.run_uuid AND rid.key = :run_tag
    WHERE r.lifecycle_stage = 'active'"""
_SQL_SCORES = """
    SELECT par.value, m.value FROM runs r
    JOIN experiments e ON e.experiment_id = r.experiment_id AND e.name = :experiment
    JOIN tags st ON st.run_uuid = r.run_uuid AND st.key = :stage_tag AND st.value = 'evaluate'
    JOIN tags par ON par.run_uuid = r.run_uuid AND par.key = :parent_tag
    JOIN latest_metrics m ON m.run_uuid = r.run_uuid AND m.key = :score
    WHERE r.lifecycle_stage = 'active' AND r.status = 'FINISHED'"""


def _sqlite_history(db: Any, experiment: str, family: str) -> list[tuple[str, str, dict, dict, float]]:
    import contextlib
    import sqlite3

    args = {"experiment": experiment, "family": family, "stage_tag": STAGE_TAG, "parent_tag": PARENT_TAG,
            "run_tag": RUN_TAG, "score": SCORE_METRIC}
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as con:
        tunes = con.execute(_SQL_TUNES, args).fetchall()
        scores = dict(con.execute(_SQL_SCORES, args).fetchall())
        params: dict[str, dict[str, str]] = {}
        metrics: dict[str, dict[str, float]] = {}
        ids = {**args, "ids": json.dumps([run for run, _, _ in tunes])}
        for run, key, value in con.execute(
                "SELECT run_uuid, key, value FROM params WHERE run_uuid IN (SELECT value FROM json_each(:ids)) "
                "AND (key = 'task_type' OR key LIKE 'recommended.%')", ids):
            params.setdefault(run, {})[key] = value
        for run, key, value in con.execute(
                "SELECT run_uuid, key, value FROM latest_metrics WHERE run_uuid IN "
                "(SELECT value FROM json_each(:ids)) AND key LIKE 'feature.%'", ids):
            metrics.setdefault(run, {})[key] = value
    return [(rid, parent, params.get(run, {}), metrics.get(run, {}), scores[parent])
            for run, parent, rid in tunes if parent in scores]


def load_history(tracking_uri: str, experiment: str, family: str, exclude_parent: str | None = None) -> list[PastRun]:
    """Scored past runs of ``family`` in the tracking store (an empty list when there are none)."""
    from lora_factory.tracking import sqlite_path

    db = sqlite_path(tracking_uri)
    if db is not None and not db.is_file():
        return []  # no store yet: nothing to learn from (and no empty database left behind)
    rows = None
    if db is not None:
        import sqlite3

        try:
            rows = _sqlite_history(db, experiment, family)
        except sqlite3.Error:
            rows = None  # a schema this code does not know: ask through MLflow's API instead
    if rows is None:
        rows = _client_history(tracking_uri, experiment, family)
    runs = [_past_run(rid, parent, params, metrics, score) for rid, parent, params, metrics, score in rows
            if parent != exclude_parent]
    return sorted((r for r in runs if r is not None), key=lambda r: (r.run_id, r.mlflow_run_id))
