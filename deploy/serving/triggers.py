"""Retrain triggers: after each rating, decide whether the concept needs a new run.

- ``lora.feedback.low-rating``: the mean of the concept's last ``rating_window`` ratings is below
  ``low_rating_threshold`` and at least ``low_rating_min_count`` ratings came since the last such
  event (so a burst fires once, and a still-bad concept fires again only on fresh evidence).
- ``lora.feedback.new-data``: ``new_data_count`` ratings (each a rated sample, some with a
  corrected caption) came since the last such event.

Events go to Prefect (``emit_event``); a deployment trigger on them starts the ``retrain`` flow.
Every event sent is recorded in the store, so a restarted server does not send it again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lora_factory.config import ServeConfig

from .feedback_store import FeedbackStore

LOW_RATING = "lora.feedback.low-rating"
NEW_DATA = "lora.feedback.new-data"
RESOURCE_PREFIX = "lora-factory.concept."
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetrainEvent:
    event: str
    concept: str
    last_feedback_id: int
    payload: dict[str, Any] = field(default_factory=dict)

    def resource(self) -> dict[str, str]:
        return {"prefect.resource.id": f"{RESOURCE_PREFIX}{self.concept}",
                "prefect.resource.name": self.concept, "lora-factory.concept": self.concept}


Emitter = Callable[[RetrainEvent], None]


def warm_up_prefect() -> None:
    """Import Prefect's event client now: the import takes seconds, and the first event would
    otherwise pay for it inside a feedback request."""
    import prefect.events  # noqa: F401


def prefect_emitter(event: RetrainEvent) -> None:
    """Send to the Prefect API of this process (PREFECT_API_URL). Without one the event stays
    recorded in the store only: ``emit_event`` would start a throwaway Prefect server in this
    process, whose triggers nobody deployed."""
    from prefect.events import emit_event
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        log.warning("%s for %r recorded but not sent: no PREFECT_API_URL and no `lora-factory "
                    "server` for this home", event.event, event.concept)
        return
    emit_event(event.event, resource=event.resource(), payload=event.payload)


def due_events(store: FeedbackStore, concept: str, cfg: ServeConfig) -> list[RetrainEvent]:
    """The events the concept's feedback calls for now (not yet recorded as sent)."""
    recent = store.recent_ratings(concept, cfg.rating_window)
    if not recent:
        return []
    newest = recent[0][0]
    events = []
    since = store.counts_since_triggers(concept, (LOW_RATING, NEW_DATA))
    mean = sum(r for _, r in recent) / len(recent)
    if len(recent) >= cfg.low_rating_min_count and since[LOW_RATING] >= cfg.low_rating_min_count \
            and mean < cfg.low_rating_threshold:
        events.append(RetrainEvent(LOW_RATING, concept, newest, {
            "mean_rating": round(mean, 4), "ratings": len(recent), "threshold": cfg.low_rating_threshold}))
    if since[NEW_DATA] >= cfg.new_data_count:
        events.append(RetrainEvent(NEW_DATA, concept, newest, {"new_samples": since[NEW_DATA]}))
    return events


def record(store: FeedbackStore, events: list[RetrainEvent]) -> None:
    """Record before emitting: a crash between the two loses one event rather than repeating it
    on every rating after a restart."""
    for event in events:
        store.record_trigger(event.concept, event.event, event.last_feedback_id, event.payload)
