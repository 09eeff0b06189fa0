"""First-time set-up of the databases, one process at a time.

Two first runs on a fresh home both create MLflow's tables ("table secrets already exists") and
migrate Prefect's database ("duplicate column name"), and one of them dies. So each set-up runs
under a lock in ``<home>/locks/`` and leaves a marker there when it is done; later runs see the
marker (and the database) and take no lock at all.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from .config import FactoryConfig
from .context import make_tracker
from .filelock import locked
from .home import Home, home_of
from .names import short_hash
from .runstore import now_iso
from .tracking import DB_SCHEMES, tracking_scheme


def once(home: Home, name: str, exists: Callable[[], bool], setup: Callable[[], None]) -> None:
    """Run ``setup`` unless a previous one finished (its marker is there and ``exists()``)."""
    marker = home.locks / f"{name}.ready"
    if marker.exists() and exists():
        return
    home.locks.mkdir(parents=True, exist_ok=True)
    with locked(home.locks / f"{name}.lock"):
        if marker.exists() and exists():
            return
        setup()
        marker.write_text(now_iso() + "\n")


def _sqlite_file(url: str) -> Path | None:
    """The database file of a ``sqlite[+driver]:///path`` URL (None: not a sqlite file)."""
    scheme, sep, rest = url.partition(":///")
    if not sep or scheme.split("+")[0] != "sqlite" or not rest:
        return None
    return Path(rest)


def _exists(db: Path | None) -> Callable[[], bool]:
    return lambda: db is None or db.exists()


def ensure_tracking_store(cfg: FactoryConfig) -> None:
    """Create the MLflow database (tables and the experiment) once, whoever comes first. A
    tracking server sets up its own database."""
    uri = cfg.tracking.uri
    if tracking_scheme(uri).split("+")[0] not in DB_SCHEMES:
        return
    once(home_of(cfg), f"mlflow-{short_hash(uri, 12)}", _exists(_sqlite_file(uri)), lambda: make_tracker(cfg))


def ensure_prefect_api(home: Home) -> None:
    """Without a Prefect server (``PREFECT_API_URL``), each process starts a temporary one that
    migrates Prefect's database on start: the first time, start it under the lock. The flow run
    later reuses the server this process started."""
    from prefect.settings import get_current_settings

    settings = get_current_settings()
    if settings.api.url or not settings.server.ephemeral.enabled:
        return
    url = settings.server.database.connection_url
    url_text = url.get_secret_value() if url is not None else ""

    def start() -> None:
        from prefect.server.api.server import SubprocessASGIServer

        SubprocessASGIServer().start()

    once(home, f"prefect-{short_hash(url_text, 12)}", _exists(_sqlite_file(url_text)), start)
