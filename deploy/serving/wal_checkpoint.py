"""Background checkpoints of the SQLite feedback store's write-ahead log.

Why: SQLite checkpoints automatically inside the commit that takes the log past 1,000 pages; that
commit copies the log into the database file and syncs it, and every rating waiting on it waits
too (the p99 of ``bench/serve.py`` came from those commits). The store's connections switch the
automatic checkpoint off (``wal_autocheckpoint=0``) and this thread checkpoints instead, in
PASSIVE mode, which never blocks the writer or a reader. Committed ratings are in the log either
way: checkpoints move them, they do not make them durable.
"""

from __future__ import annotations

import logging
import sqlite3
import threading

log = logging.getLogger(__name__)


class WalCheckpointer:
    """Checkpoint the database at ``path`` every ``every_s`` seconds until ``stop()``."""

    def __init__(self, path: str, every_s: float = 1.0) -> None:
        self.path = path
        self.every_s = every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="feedback-wal-checkpoint", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        con = sqlite3.connect(self.path, timeout=30, check_same_thread=False)
        try:
            while not self._stop.wait(self.every_s):
                try:
                    con.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                except sqlite3.Error as e:  # busy or locked: the next round catches up
                    log.debug("WAL checkpoint of %s skipped: %s", self.path, e)
        finally:
            con.close()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
