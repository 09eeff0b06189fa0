"""The feedback store's tables and their migrations.

Why numbered migrations instead of ``create_all``: a store filled by a running service must keep
its rows when the code's schema grows. ``schema_version`` holds the last migration applied; each
migration runs once, in its own transaction, in order. A database newer than this code is refused
rather than written to with the wrong shape.
"""

from __future__ import annotations

from collections.abc import Callable

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from lora_factory.errors import StoreError

metadata = sa.MetaData()

schema_version = sa.Table(
    "schema_version", metadata,
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("applied_at", sa.DateTime(timezone=True), nullable=False),
)

generations = sa.Table(
    "generations", metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("concept", sa.String(250), nullable=False, index=True),
    sa.Column("model_version", sa.String(32), nullable=False),
    sa.Column("prompt", sa.Text, nullable=False),
    sa.Column("seed", sa.BigInteger, nullable=False),
    sa.Column("steps", sa.Integer, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)

feedback = sa.Table(
    "feedback", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("generation_id", sa.String(32), sa.ForeignKey("generations.id"), nullable=True, index=True),
    sa.Column("run_id", sa.String(250), nullable=True),
    sa.Column("concept", sa.String(250), nullable=False, index=True),
    sa.Column("rating", sa.SmallInteger, nullable=False),
    sa.Column("comment", sa.Text, nullable=True),
    sa.Column("corrected_caption", sa.Text, nullable=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)

# Added by migration 2: the retrain events sent, so a trigger fires once per condition, not on
# every rating that follows it.
trigger_events = sa.Table(
    "trigger_events", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("concept", sa.String(250), nullable=False, index=True),
    sa.Column("event", sa.String(100), nullable=False),
    sa.Column("last_feedback_id", sa.Integer, nullable=False),  # the newest feedback it covers
    sa.Column("payload", sa.JSON, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)

# Added by migration 3: outputs the safety filter blocked (the image itself is never kept).
safety_blocks = sa.Table(
    "safety_blocks", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("concept", sa.String(250), nullable=False, index=True),
    sa.Column("model_version", sa.String(32), nullable=False),
    sa.Column("prompt", sa.Text, nullable=False),
    sa.Column("seed", sa.BigInteger, nullable=False),
    sa.Column("steps", sa.Integer, nullable=False),
    sa.Column("score", sa.Float, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)

# Added by migration 4: the PNG of a served generation (``serve.keep_images``), so a rating with a
# corrected caption can later become a training sample of the concept's retrain run.
generation_images = sa.Table(
    "generation_images", metadata,
    sa.Column("generation_id", sa.String(32), sa.ForeignKey("generations.id"), primary_key=True),
    sa.Column("png", sa.LargeBinary, nullable=False),
)


def _v1(con: Connection) -> None:
    for table in (generations, feedback):
        table.create(con)


def _v2(con: Connection) -> None:
    trigger_events.create(con)


def _v3(con: Connection) -> None:
    safety_blocks.create(con)


def _v4(con: Connection) -> None:
    generation_images.create(con)


MIGRATIONS: list[Callable[[Connection], None]] = [_v1, _v2, _v3, _v4]
LATEST = len(MIGRATIONS)


def current_version(con: Connection) -> int:
    if not sa.inspect(con).has_table("schema_version"):
        return 0
    return int(con.execute(sa.select(sa.func.max(schema_version.c.version))).scalar() or 0)


def migrate(engine: sa.Engine, target: int = LATEST, where: str = "feedback store") -> int:
    """Apply the migrations after the database's version up to ``target``; returns the version."""
    with engine.begin() as con:
        schema_version.create(con, checkfirst=True)
    for number in range(1, target + 1):
        with engine.begin() as con:  # one transaction per migration: all of it or none of it
            found = current_version(con)
            if found > LATEST:
                raise StoreError(f"{where} has schema version {found}, newer than this code's "
                                 f"{LATEST}: upgrade lora-factory before serving from it")
            if found >= number:
                continue
            MIGRATIONS[number - 1](con)
            con.execute(schema_version.insert().values(version=number, applied_at=sa.func.now()))
    with engine.connect() as con:
        return current_version(con)
