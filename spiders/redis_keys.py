"""The Redis key layout of a distributed crawl: every key of run ``<prefix>:<run id>``.

Why one module: the crawler-side components (``spiders.frontier``, ``spiders.bounds``,
``spiders.inflight``) and the parent-side cleanup (``spiders.workers.delete_run_keys``) must
agree on every name. Keys, all under ``<redis_key_prefix>:<run id>:``:

- ``requests``: the shared frontier (a priority queue of serialized requests);
- ``dupefilter``: fingerprints of every request any worker scheduled (the shared seen-set);
- ``workers``: names of the workers that joined; ``alive:<worker>`` (value: its pid) and
  ``busy:<worker>``: short-TTL heartbeats; ``inflight:<worker>``: requests the worker took and
  has not finished;
- ``count:images``, ``count:topics`` (a hash: topic key -> images kept), ``count:pages``: the
  run's bounds.

Worker names are checked by ``spiders.spec.Frontier``; topics enter only as hash fields, through
``lora_factory.names.topic_key``.
"""

from __future__ import annotations

from dataclasses import dataclass

from lora_factory.config import CrawlConfig


def run_key(config: CrawlConfig, run_id: str) -> str:
    """The prefix of every key of the run."""
    return f"{config.redis_key_prefix}:{run_id}"


@dataclass(frozen=True)
class RunKeys:
    """Names of run ``base``'s keys, seen from worker ``worker``."""

    base: str
    worker: str = ""

    @property
    def queue(self) -> str:
        return f"{self.base}:requests"

    @property
    def dupefilter(self) -> str:
        return f"{self.base}:dupefilter"

    @property
    def workers(self) -> str:
        return f"{self.base}:workers"

    def alive(self, worker: str) -> str:
        return f"{self.base}:alive:{worker}"

    def busy(self, worker: str) -> str:
        return f"{self.base}:busy:{worker}"

    def inflight(self, worker: str) -> str:
        return f"{self.base}:inflight:{worker}"

    @property
    def counts(self) -> tuple[str, str, str]:
        """The run's counts: images kept, images per topic, pages requested."""
        return f"{self.base}:count:images", f"{self.base}:count:topics", f"{self.base}:count:pages"

    def all_fixed(self) -> list[str]:
        """Every key of the run that does not name a worker."""
        return [self.queue, self.dupefilter, self.workers, *self.counts]
