"""Source selection: what the crawl starts from for ``crawl.source``.

- ``seeds``: topic -> page URLs from ``crawl.seeds``; a seed that names a sitemap is expanded
  into the pages it lists (bounded by ``max_pages``).
- ``wikimedia`` / ``openverse``: topic -> image candidates from the API (bounded by
  ``api_max_results``); the crawl fetches those images directly, keeping their provenance.
- ``demo`` is served by ``tasks.crawl`` (it needs a running site), not here.
"""

from __future__ import annotations

from typing import Any

from lora_factory.config import CrawlConfig
from lora_factory.errors import StageError

from .candidate import ImageCandidate
from .openverse import openverse_candidates
from .sitemaps import looks_like_sitemap, sitemap_urls
from .wikimedia import wikimedia_candidates

API_SOURCES = ("wikimedia", "openverse")


def expand_seeds(config: CrawlConfig, topics: list[str]) -> dict[str, list[str]]:
    """``crawl.seeds`` for ``topics``, sitemap seeds replaced by their page URLs.

    Raises ``StageError`` when a topic has no seeds or a sitemap cannot be read.
    """
    missing = [t for t in topics if not config.seeds.get(t)]
    if missing:
        raise StageError(f"crawl.source is 'seeds' but crawl.seeds has no URLs for {missing}: add them")
    out: dict[str, list[str]] = {}
    for topic in topics:
        urls: list[str] = []
        for url in config.seeds[topic]:
            found = (
                sitemap_urls(url, config.user_agent, max_urls=config.max_pages,
                             timeout_s=min(config.download_timeout_s, 30.0))
                if looks_like_sitemap(url) else [url]
            )
            urls += [u for u in found if u not in urls]
        out[topic] = urls
    return out


def api_candidates(config: CrawlConfig, topics: list[str]) -> dict[str, list[ImageCandidate]]:
    """Image candidates per topic from ``crawl.source`` (``wikimedia`` or ``openverse``)."""
    timeout = min(config.download_timeout_s, 30.0)
    out: dict[str, list[ImageCandidate]] = {}
    for topic in topics:
        if config.source == "wikimedia":
            out[topic] = wikimedia_candidates(
                topic, config.wikimedia_api_url, config.user_agent, config.api_max_results,
                timeout_s=timeout,
            )
        elif config.source == "openverse":
            out[topic] = openverse_candidates(
                topic, config.openverse_api_url, config.user_agent, config.api_max_results,
                timeout_s=timeout,
            )
        else:
            raise ValueError(f"{config.source!r} is not an API source")
    return out


def api_images(config: CrawlConfig, topics: list[str]) -> dict[str, list[dict[str, Any]]]:
    """``api_candidates`` as the crawl's ``topics_to_images`` (provenance dicts with ``image_url``)."""
    return {t: [c.provenance() for c in cs] for t, cs in api_candidates(config, topics).items()}
