"""``ImageCandidate``: an image an API source found, with the provenance the crawl keeps.

Why a record of its own: API sources (Wikimedia Commons, Openverse) already know an image's
licence, author and description page, so the crawl fetches these images directly instead of
discovering them on pages; the candidate carries that provenance into ``items.parquet``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ImageCandidate:
    """One image from an API source."""

    topic: str
    image_url: str
    page_url: str  # the file's description / landing page
    license: str  # an SPDX-ish id ("CC-BY-SA-4.0", "CC0-1.0", "public-domain") or "unknown"
    license_url: str | None
    author: str | None
    title: str | None
    description: str | None
    attribution: str | None  # a ready-made credit line, when the source gives one
    source: str  # "wikimedia" | "openverse"
    width: int | None = None
    height: int | None = None
    mime_type: str | None = None

    def provenance(self) -> dict[str, Any]:
        """The crawl's per-image provenance (the ``items.parquet`` columns the spider fills).

        The item schema has no description/attribution columns: the description goes into
        ``surrounding_text`` and the attribution line into ``figure_caption``.
        """
        return {
            "image_url": self.image_url,
            "page_url": self.page_url,
            "page_title": self.title,
            "topic": self.topic,
            "license": self.license,
            "license_url": self.license_url,
            "author": self.author,
            "alt_text": None,
            "title_text": self.title,
            "figure_caption": self.attribution,
            "surrounding_text": self.description,
        }
