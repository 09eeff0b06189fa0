"""The crawl spec: everything the crawler process needs, typed once, sent as the model's JSON.

Why a model: the spec crosses a process boundary (``spiders.crawl.run_crawl`` in the parent,
``python -m spiders.run`` in the child); both sides read and write it only through this class
(``model_dump_json`` / ``model_validate_json``), so a field cannot be spelled two ways. The
parent sends it on the child's stdin, because it may hold secrets (a password in
``crawl.redis_url``); the crawl folder keeps a redacted copy (``crawl_config.json``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from lora_factory.config import CrawlConfig
from lora_factory.secrets import redact

WORKER_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


class Frontier(BaseModel):
    """Distributed mode: this crawler is worker ``worker`` of run ``run_id`` on the shared Redis
    frontier (``spiders.frontier``); a re-run under the same name resumes that worker's part."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    run_id: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,128}$")
    worker: str = Field(pattern=WORKER_PATTERN)


class CrawlSpec(BaseModel):
    """One crawl: seeds per topic, where to write, the config, and (distributed) the frontier."""

    model_config = ConfigDict(extra="forbid")

    topics: dict[str, list[str]]  # topic -> seed page URLs
    out_dir: Path  # items/pages/rejected parquet, crawl_stats.json, images/
    crawl: CrawlConfig
    state_dir: Path  # the journal and the downloaded-image store, kept across attempts
    models_dir: Path | None = None  # where the relevance model is cached
    # Images an API source found: topic -> provenance dicts with "image_url", fetched directly.
    images: dict[str, list[dict[str, Any]]] = Field(default_factory=dict)
    frontier: Frontier | None = None

    @model_validator(mode="after")
    def _frontier_needs_redis(self) -> CrawlSpec:
        if (self.frontier is None) == bool(self.crawl.redis_url):
            raise ValueError(
                "crawl.redis_url and a frontier go together: start distributed crawls with "
                "spiders.workers.run_workers"
            )
        return self

    def redacted_json(self) -> str:
        """The spec as recorded in the crawl folder: every credential in a URL masked."""
        return json.dumps(redact(self.model_dump(mode="json")), indent=2, ensure_ascii=False) + "\n"
