"""The local data folder (``home``): one place that says what lives where.

::

    <home>/models/        model references built or downloaded once (tiny models, hub snapshots)
    <home>/cache/train/   latents and text embeddings, keyed by content (shared by every run)
    <home>/cache/llm/     LLM tagger answers, keyed by input hash
    <home>/cache/doctor/  dataset doctor measures and CLIP embeddings, keyed by file content
    <home>/work/          local scratch for remote (S3) stores and staging
    <home>/mlartifacts/   MLflow artefacts of the default SQLite tracking store
    <home>/mlflow.db      the default tracking store
    <home>/locks/         inter-process locks (first-time database set-up)
    <home>/server/        `lora-factory server`: its state (addresses, process ids) and logs
    <home>/prefect/       PREFECT_HOME of that server (its SQLite database by default)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .config import FactoryConfig
from .runstore import RunStore
from .storage import open_store


@dataclass(frozen=True)
class Home:
    root: Path

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def train_cache(self) -> Path:
        return self.root / "cache" / "train"

    @property
    def llm_cache(self) -> Path:
        return self.root / "cache" / "llm"

    @property
    def doctor_cache(self) -> Path:
        return self.root / "cache" / "doctor"

    @property
    def work(self) -> Path:
        return self.root / "work"

    @property
    def mlartifacts(self) -> Path:
        return self.root / "mlartifacts"

    @property
    def mlflow_db(self) -> Path:
        return self.root / "mlflow.db"

    @property
    def locks(self) -> Path:
        return self.root / "locks"

    @property
    def server(self) -> Path:
        return self.root / "server"

    @property
    def prefect(self) -> Path:
        return self.root / "prefect"


def home_of(cfg: FactoryConfig) -> Home:
    return Home(Path(cfg.home))


def run_store_for(cfg: FactoryConfig) -> RunStore:
    """The one way to open the configured run store."""
    return RunStore(open_store(cfg.store.root, cfg.store.s3_endpoint_url), home_of(cfg).work)
