"""The last rejection's advice: when the newest deploy of a concept rejected its candidate, the
gate left a suggestion (``deploy.suggest``: factors on max_steps, rank, learning_rate, and
``more_data`` on the images) on that deploy stage's MLflow run; the next run of the concept
starts from it. Only the newest deploy counts: once a candidate was promoted, the advice that led
there is history (the past-runs shift learns from it), not an instruction.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from .history import PARENT_TAG, RUN_TAG, STAGE_TAG, VALUE_PREFIX

VERDICT_TAG = "verdict"
CONCEPT_TAG = "concept"
SUGGESTION_TAG = "suggestion"  # deploy.suggest.SUGGESTION_TAG (the tuner does not import deploy)
TUNED = ("max_steps", "rank", "learning_rate")  # the factors the tuner applies; more_data is the crawl's


@dataclass(frozen=True)
class PastSuggestion:
    """A rejected run's advice for ``concept``."""

    concept: str
    run_id: str  # the rejected factory run
    mlflow_run_id: str  # its deploy stage's MLflow run
    changes: dict[str, float] = field(default_factory=dict)
    why: list[str] = field(default_factory=list)
    values: dict[str, float] = field(default_factory=dict)  # what the rejected run trained with (TUNED)

    @property
    def cite(self) -> str:
        return f"run {self.run_id} was rejected; its gate suggested"


def parse_suggestion(concept: str, tags: dict[str, str], mlflow_run_id: str,
                     params: dict[str, str] | None = None) -> PastSuggestion | None:
    """The suggestion of a deploy stage run's tags (None: not rejected, or no usable advice)."""
    if tags.get(VERDICT_TAG) != "rejected" or not tags.get(SUGGESTION_TAG):
        return None
    try:
        data = json.loads(tags[SUGGESTION_TAG])
        changes = {str(k): float(v) for k, v in (data.get("changes") or {}).items() if float(v) > 0}
        why = [str(w) for w in data.get("why") or []]
    except (ValueError, TypeError, AttributeError):
        return None  # a tag another tool wrote: no advice rather than a failed tune
    if not changes:
        return None
    values = {}
    for key in TUNED:
        try:
            values[key] = float((params or {})[VALUE_PREFIX + key])
        except (KeyError, ValueError):
            continue
    return PastSuggestion(concept, tags.get(RUN_TAG) or tags.get(PARENT_TAG, ""), mlflow_run_id, changes, why,
                          values)


def load_suggestion(tracking_uri: str, experiment: str, concept: str,
                    exclude_parent: str | None = None, scan: int = 500) -> PastSuggestion | None:
    """The advice of ``concept``'s newest deploy (among the newest ``scan`` deploys of the
    experiment), when it rejected; this run's own deploy (``exclude_parent``) does not count."""
    from mlflow.tracking import MlflowClient

    from lora_factory.tracking import sqlite_path

    db = sqlite_path(tracking_uri)
    if db is not None and not db.is_file():
        return None  # no store yet (and none created by asking)
    client = MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return None
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.`{STAGE_TAG}` = 'deploy'",
                              order_by=["attributes.start_time DESC"], max_results=scan)
    for run in runs:
        tags = run.data.tags
        if tags.get(CONCEPT_TAG) == concept and VERDICT_TAG in tags and tags.get(PARENT_TAG) != exclude_parent:
            tune = client.search_runs([exp.experiment_id], max_results=1, filter_string=(
                f"tags.`{STAGE_TAG}` = 'tune' and tags.`{PARENT_TAG}` = '{tags.get(PARENT_TAG, '')}'"))
            return parse_suggestion(concept, tags, run.info.run_id, tune[0].data.params if tune else None)
    return None
