"""The feedback store: generations served and the ratings users gave them.

SQLAlchemy over SQLite by default (one file in the home), PostgreSQL by URL. Every write is one
committed transaction before the HTTP answer goes out, so an answered request survives a restart
or a killed server. SQLite runs in WAL mode: readers do not block the writer, and a commit is in
the database file's log before ``commit()`` returns (``synchronous=NORMAL`` keeps it across a
killed process; only a power cut could lose the last commits). Its log is checkpointed by a
background thread (``wal_checkpoint.py``), never inside a rating's commit.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from lora_factory.errors import ConfigError, StoreError
from lora_factory.secrets import redact_url

from .schema import feedback, generation_images, generations, migrate, safety_blocks, trigger_events
from .wal_checkpoint import WalCheckpointer


def default_url(home: Path) -> str:
    return f"sqlite:///{home / 'feedback.db'}"


def _sqlite_pragmas(dbapi_con: Any, _record: Any) -> None:
    """Per connection. WAL itself is set once, in ``FeedbackStore.__init__``: it is stored in the
    file, and asking for it on each new connection takes a lock that races the writers."""
    cur = dbapi_con.cursor()
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA wal_autocheckpoint=0")  # WalCheckpointer does it, off the commit path
    cur.close()


def make_engine(url: str) -> sa.Engine:
    """An engine for ``url``; a malformed URL is one clear line, not a traceback."""
    try:
        parsed = sa.make_url(url)
    except sa.exc.ArgumentError as e:
        raise ConfigError(f"serve.feedback_url = {redact_url(url)!r} is not a database URL "
                          "(sqlite:///path or postgresql://user@host/db)") from e
    if parsed.get_backend_name() == "sqlite":
        if parsed.database:
            try:
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise StoreError(f"feedback store {url} cannot be created: {e}") from e
        engine = sa.create_engine(parsed, connect_args={"check_same_thread": False, "timeout": 30},
                                  pool_size=8, max_overflow=24)
        sa.event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return sa.create_engine(parsed, pool_pre_ping=True, pool_size=8, max_overflow=24)


@dataclass(frozen=True)
class Generation:
    id: str
    concept: str
    model_version: str
    prompt: str
    seed: int
    steps: int


class FeedbackStore:
    """Record generations and feedback; answer the questions the retrain triggers ask."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        # SQLite has one writer at a time; waiting on a Python lock is far cheaper than SQLite's
        # busy handler, which sleeps in growing steps while 32 threads race for the file lock.
        self._sqlite = self.engine.dialect.name == "sqlite"
        self._write_lock = threading.Lock()
        self._checkpointer: WalCheckpointer | None = None
        if self._sqlite:
            with self.engine.connect() as con:
                con.exec_driver_sql("PRAGMA journal_mode=WAL")
        try:
            self.version = migrate(self.engine)
        except sa.exc.OperationalError as e:
            raise StoreError(f"feedback store {redact_url(url)} cannot be opened: "
                             f"{str(e.orig).strip().splitlines()[0]}") from e
        database = self.engine.url.database
        if self._sqlite and database and database != ":memory:":
            self._checkpointer = WalCheckpointer(database)

    def close(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.stop()
        self.engine.dispose()

    @contextmanager
    def _writing(self) -> Iterator[sa.Connection]:
        if not self._sqlite:
            with self.engine.begin() as con:
                yield con
            return
        with self._write_lock, self.engine.begin() as con:
            yield con

    def add_generation(self, concept: str, model_version: str, prompt: str, seed: int,
                       steps: int, png: bytes | None = None) -> Generation:
        """Record a served image; with ``png`` its bytes too (in the same transaction), so a
        later corrected caption has the image it describes."""
        gen = Generation(uuid.uuid4().hex, concept, model_version, prompt, seed, steps)
        with self._writing() as con:
            con.execute(generations.insert().values(**gen.__dict__, created_at=datetime.now(UTC)))
            if png is not None:
                con.execute(generation_images.insert().values(generation_id=gen.id, png=png))
        return gen

    def add_block(self, concept: str, model_version: str, prompt: str, seed: int, steps: int,
                  score: float) -> int:
        """Record an output the safety filter blocked (without the image)."""
        with self._writing() as con:
            result = con.execute(safety_blocks.insert().values(
                concept=concept, model_version=model_version, prompt=prompt, seed=seed, steps=steps,
                score=score, created_at=datetime.now(UTC)))
        return int(result.inserted_primary_key[0])

    def count_blocks(self, concept: str) -> int:
        query = sa.select(sa.func.count()).select_from(safety_blocks).where(safety_blocks.c.concept == concept)
        with self.engine.connect() as con:
            return int(con.execute(query).scalar_one())

    def generation_png(self, generation_id: str) -> bytes | None:
        """The PNG served for ``generation_id`` (None: not kept, ``serve.keep_images`` off)."""
        query = sa.select(generation_images.c.png).where(generation_images.c.generation_id == generation_id)
        with self.engine.connect() as con:
            found = con.execute(query).scalar()
        return bytes(found) if found is not None else None

    def generation(self, generation_id: str) -> Generation | None:
        with self.engine.connect() as con:
            row = con.execute(sa.select(generations).where(generations.c.id == generation_id)).first()
        if row is None:
            return None
        return Generation(row.id, row.concept, row.model_version, row.prompt, row.seed, row.steps)

    def add_feedback(self, concept: str, rating: int, *, generation_id: str | None = None,
                     run_id: str | None = None, comment: str | None = None,
                     corrected_caption: str | None = None) -> int:
        return self.add_feedback_many([{
            "generation_id": generation_id, "run_id": run_id, "concept": concept, "rating": rating,
            "comment": comment, "corrected_caption": corrected_caption}])[0]

    def add_feedback_many(self, rows: list[dict[str, Any]]) -> list[int]:
        """Insert ``rows`` (the feedback columns but id and created_at) in one transaction: one
        commit for a whole batch of ratings. Returns their ids, in order."""
        if not rows:
            return []
        now = datetime.now(UTC)
        query = feedback.insert().returning(feedback.c.id, sort_by_parameter_order=True)
        with self._writing() as con:
            result = con.execute(query, [{**row, "created_at": now} for row in rows])
            return [int(r.id) for r in result]

    def generation_concepts(self, generation_ids: set[str]) -> dict[str, str]:
        """Generation id -> concept, for those of ``generation_ids`` this store knows."""
        if not generation_ids:
            return {}
        query = sa.select(generations.c.id, generations.c.concept).where(generations.c.id.in_(generation_ids))
        with self.engine.connect() as con:
            return {r.id: r.concept for r in con.execute(query)}

    def count_feedback(self, concept: str | None = None) -> int:
        query = sa.select(sa.func.count()).select_from(feedback)
        if concept is not None:
            query = query.where(feedback.c.concept == concept)
        with self.engine.connect() as con:
            return int(con.execute(query).scalar_one())

    def recent_ratings(self, concept: str, limit: int) -> list[tuple[int, int]]:
        """The ``limit`` newest (feedback id, rating) pairs of ``concept``, newest first."""
        query = (sa.select(feedback.c.id, feedback.c.rating).where(feedback.c.concept == concept)
                 .order_by(feedback.c.id.desc()).limit(limit))
        with self.engine.connect() as con:
            return [(int(r.id), int(r.rating)) for r in con.execute(query)]

    def counts_since_triggers(self, concept: str, events: tuple[str, ...]) -> dict[str, int]:
        """For each event, the feedback rows of ``concept`` newer than the last such event sent
        (all rows when none was): one query, as it runs on every rating."""
        columns = []
        for event in events:
            last = (sa.select(sa.func.coalesce(sa.func.max(trigger_events.c.last_feedback_id), 0))
                    .where(trigger_events.c.concept == concept, trigger_events.c.event == event)
                    .scalar_subquery())
            columns.append(sa.func.count().filter(feedback.c.id > last))
        query = sa.select(*columns).select_from(feedback).where(feedback.c.concept == concept)
        with self.engine.connect() as con:
            row = con.execute(query).one()
        return {event: int(row[i] or 0) for i, event in enumerate(events)}

    def last_trigger(self, concept: str, event: str) -> int:
        """The newest feedback id covered by the last ``event`` sent for ``concept`` (0: none)."""
        query = (sa.select(sa.func.max(trigger_events.c.last_feedback_id))
                 .where(trigger_events.c.concept == concept, trigger_events.c.event == event))
        with self.engine.connect() as con:
            return int(con.execute(query).scalar() or 0)

    def record_trigger(self, concept: str, event: str, last_feedback_id: int,
                       payload: dict[str, Any]) -> None:
        with self._writing() as con:
            con.execute(trigger_events.insert().values(
                concept=concept, event=event, last_feedback_id=last_feedback_id, payload=payload,
                created_at=datetime.now(UTC)))

    def feedback_rows(self, concept: str) -> list[dict[str, Any]]:
        """Every feedback row of ``concept`` with its generation's prompt (for retraining)."""
        query = (sa.select(feedback, generations.c.prompt, generations.c.model_version)
                 .select_from(feedback.outerjoin(generations))
                 .where(feedback.c.concept == concept).order_by(feedback.c.id))
        with self.engine.connect() as con:
            return [dict(r._mapping) for r in con.execute(query)]
