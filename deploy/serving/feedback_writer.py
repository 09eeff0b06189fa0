"""One writer thread for the ratings: requests hand their rating over and wait; the thread writes
all ratings waiting at that moment in one transaction and answers each request only after the
commit. So 32 clients cost one commit per batch instead of 32, and an answered rating is still
in the database before its answer leaves (a killed server loses only unanswered requests).

The retrain triggers are decided by the same thread after each batch, once per concept of the
batch (the only writer of this process, so no lock is needed to avoid sending an event twice);
the events go back with the answer of the concept's last rating in the batch.
"""

from __future__ import annotations

import logging
import queue
import threading
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from lora_factory.config import ServeConfig

from .feedback_store import FeedbackStore
from .triggers import RetrainEvent, due_events, record

log = logging.getLogger(__name__)


class FeedbackRejected(Exception):
    """A rating the store cannot take (an unknown generation, a concept that does not match)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Rating:
    """One rating as the request gave it (``concept`` may be None with a ``generation_id``)."""

    rating: int
    concept: str | None = None
    generation_id: str | None = None
    run_id: str | None = None
    comment: str | None = None
    corrected_caption: str | None = None


@dataclass
class Written:
    id: int
    concept: str
    events: list[RetrainEvent] = field(default_factory=list)


Pending = tuple[Rating, "Future[Written]"]


class FeedbackWriter:
    """Batches ratings into single transactions on a background thread."""

    def __init__(self, store: FeedbackStore, cfg: ServeConfig, max_batch: int = 256) -> None:
        self.store = store
        self.cfg = cfg
        self.max_batch = max_batch
        self._queue: queue.SimpleQueue[Pending | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="feedback-writer", daemon=True)
        self._thread.start()

    def submit(self, rating: Rating) -> Future[Written]:
        """The future is set once the rating is committed (or fails with the reason)."""
        done: Future[Written] = Future()
        self._queue.put((rating, done))
        return done

    def close(self) -> None:
        """Write what is queued, then stop the thread."""
        self._queue.put(None)
        self._thread.join(60)

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            batch, stop = ([], True) if first is None else ([first], False)
            while not stop and len(batch) < self.max_batch:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                else:
                    batch.append(item)
            if batch:
                self._write(batch)
            if stop:
                return

    def _write(self, batch: list[Pending]) -> None:
        try:
            accepted = self._accept(batch)
            ids = self.store.add_feedback_many([_row(r, concept) for (r, _), concept in accepted])
            written = [Written(fid, concept) for fid, (_, concept) in zip(ids, accepted, strict=True)]
            if self.cfg.emit_events:
                self._decide(written)
        except Exception as e:  # noqa: BLE001 - every waiting request must get an answer
            log.exception("writing %d ratings failed", len(batch))
            for _, done in batch:
                if not done.done():
                    done.set_exception(e)
            return
        for ((_, done), _concept), w in zip(accepted, written, strict=True):
            done.set_result(w)

    def _accept(self, batch: list[Pending]) -> list[tuple[Pending, str]]:
        """The ratings that can be stored, each with its concept; the others are answered now."""
        known = self.store.generation_concepts({r.generation_id for r, _ in batch if r.generation_id})
        accepted = []
        for rating, done in batch:
            concept = rating.concept
            if rating.generation_id is not None:
                found = known.get(rating.generation_id)
                if found is None:
                    done.set_exception(FeedbackRejected(
                        404, f"generation_id {rating.generation_id!r} is unknown to this server"))
                    continue
                if concept is not None and concept != found:
                    done.set_exception(FeedbackRejected(
                        422, f"concept {concept!r} does not match the generation's {found!r}"))
                    continue
                concept = found
            if concept is None:
                done.set_exception(FeedbackRejected(422, "feedback on a run_id needs the concept"))
                continue
            accepted.append(((rating, done), concept))
        return accepted

    def _decide(self, written: list[Written]) -> None:
        last: dict[str, Written] = {w.concept: w for w in written}
        for concept, w in last.items():
            due = due_events(self.store, concept, self.cfg)
            record(self.store, due)
            w.events = due


def _row(rating: Rating, concept: str) -> dict[str, Any]:
    return {"generation_id": rating.generation_id, "run_id": rating.run_id, "concept": concept,
            "rating": rating.rating, "comment": rating.comment, "corrected_caption": rating.corrected_caption}
