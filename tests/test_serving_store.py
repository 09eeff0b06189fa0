"""The feedback store: migrations keep rows, PostgreSQL by URL, committed rows survive SIGKILL."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from deploy.serving import schema
from deploy.serving.feedback_store import FeedbackStore
from lora_factory.errors import ConfigError, StoreError


def test_feedback_round_trip_and_questions_of_the_triggers(feedback_db_url: str) -> None:
    store = FeedbackStore(feedback_db_url)
    try:
        gen = store.add_generation("lighthouse", "3", "a lighthouse at dusk", 7, 4)
        assert store.generation(gen.id) == gen and store.generation("nope") is None
        first = store.add_feedback("lighthouse", 2, generation_id=gen.id, comment="blurry",
                                   corrected_caption="lfstyle, a red lighthouse")
        store.add_feedback("lighthouse", 5, run_id="run-1")
        store.add_feedback("sailboat", 4)
        assert store.count_feedback() == 3 and store.count_feedback("lighthouse") == 2
        assert [r for _, r in store.recent_ratings("lighthouse", 10)] == [5, 2]
        low, new = "lora.feedback.low-rating", "lora.feedback.new-data"
        assert store.counts_since_triggers("lighthouse", (low, new)) == {low: 2, new: 2}
        assert store.last_trigger("lighthouse", low) == 0
        store.record_trigger("lighthouse", low, first, {"mean": 2.0})
        assert store.last_trigger("lighthouse", low) == first
        assert store.counts_since_triggers("lighthouse", (low, new)) == {low: 1, new: 2}
        assert store.counts_since_triggers("nothing", (low,)) == {low: 0}
        rows = store.feedback_rows("lighthouse")
        assert rows[0]["prompt"] == "a lighthouse at dusk" and rows[0]["corrected_caption"].endswith("lighthouse")
        assert rows[1]["prompt"] is None and rows[1]["run_id"] == "run-1"
    finally:
        store.close()


def test_served_images_are_kept_with_their_generation(feedback_db_url: str) -> None:
    store = FeedbackStore(feedback_db_url)
    try:
        png = bytes(range(256)) * 40  # binary, with NUL bytes
        kept = store.add_generation("lighthouse", "3", "a lighthouse", 1, 4, png=png)
        bare = store.add_generation("lighthouse", "3", "a lighthouse", 2, 4)
        assert store.generation_png(kept.id) == png
        assert store.generation_png(bare.id) is None and store.generation_png("nope") is None
    finally:
        store.close()


def test_a_migration_keeps_the_rows_of_an_older_schema(feedback_db_url: str) -> None:
    engine = sa.create_engine(feedback_db_url)
    assert schema.migrate(engine, target=1) == 1
    with engine.begin() as con:
        con.execute(schema.feedback.insert().values(concept="old", rating=3, created_at=sa.func.now()))
        assert not sa.inspect(con).has_table("trigger_events")
    engine.dispose()
    store = FeedbackStore(feedback_db_url)  # migrates 1 -> 4
    try:
        assert store.version == schema.LATEST == 4
        assert store.count_feedback("old") == 1
        assert store.last_trigger("old", "x") == 0  # the new tables are there
        assert store.count_blocks("old") == 0
        assert store.generation_png("none") is None
        with store.engine.connect() as con:
            assert [r.version for r in con.execute(sa.select(schema.schema_version))] == [1, 2, 3, 4]
    finally:
        store.close()
    assert FeedbackStore(feedback_db_url).version == 4  # reopening applies nothing twice


def test_a_newer_database_is_refused(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'f.db'}"
    FeedbackStore(url).close()
    engine = sa.create_engine(url)
    with engine.begin() as con:
        con.execute(schema.schema_version.insert().values(version=99, applied_at=sa.func.now()))
    engine.dispose()
    with pytest.raises(StoreError, match="schema version 99, newer"):
        FeedbackStore(url)


def test_bad_urls_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a database URL"):
        FeedbackStore("not a url")
    (tmp_path / "a-file").write_text("")
    with pytest.raises(StoreError, match="cannot be created"):
        FeedbackStore(f"sqlite:///{tmp_path / 'a-file' / 'f.db'}")


@pytest.mark.services
def test_a_missing_postgresql_database_is_one_line() -> None:
    with pytest.raises(StoreError, match="cannot be opened") as info:
        FeedbackStore("postgresql://postgres@127.0.0.1:5432/lf_serve_no_such_db")
    assert "\n" not in str(info.value)


WRITER = """
import sys
import time
from deploy.serving.feedback_store import FeedbackStore
store = FeedbackStore(sys.argv[1])
i = 0
while True:
    i += 1
    fid = store.add_feedback("kill", 1 + i % 5, comment=f"row {i}")
    print(fid, flush=True)
"""


def test_every_committed_row_survives_sigkill(feedback_db_url: str) -> None:
    """A writer process reports each committed id, then is killed with SIGKILL mid-stream."""
    proc = subprocess.Popen([sys.executable, "-c", WRITER, feedback_db_url], stdout=subprocess.PIPE, text=True)
    seen: list[int] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            seen.append(int(line))
            if len(seen) >= 200:
                break
    finally:
        proc.kill()  # SIGKILL: no atexit, no flush, no close
        proc.wait(60)
    assert len(seen) == 200
    store = FeedbackStore(feedback_db_url)
    try:
        with store.engine.connect() as con:
            ids = {r.id for r in con.execute(sa.select(schema.feedback.c.id))}
        assert set(seen) <= ids
    finally:
        store.close()


def test_the_wal_is_checkpointed_off_the_commit_path(tmp_path: Path) -> None:
    """Writers never checkpoint (a commit crossing 1,000 log pages would copy and sync the log
    while every waiting rating waits); the store's background thread moves the log into the
    database file. Seen from outside: the file grows while nobody else checkpoints."""
    store = FeedbackStore(f"sqlite:///{tmp_path / 'f.db'}")
    try:
        with store.engine.connect() as con:
            assert con.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar() == 0
        before = (tmp_path / "f.db").stat().st_size
        row = {"generation_id": None, "run_id": "r", "concept": "c", "rating": 4, "comment": "x" * 200,
               "corrected_caption": None}
        for _ in range(20):
            store.add_feedback_many([row] * 100)
        deadline = time.monotonic() + 120
        while (tmp_path / "f.db").stat().st_size <= before and time.monotonic() < deadline:
            time.sleep(0.2)
        assert (tmp_path / "f.db").stat().st_size > before
        assert store.count_feedback("c") == 2000
    finally:
        store.close()
