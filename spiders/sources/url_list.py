"""``crawl.source: urls``: image URLs from a list, in the formats LAION-style datasets ship.

- a text file: one URL per line, optionally followed by a tab (or spaces) and a caption; ``#``
  starts a comment;
- CSV/TSV with a header: a ``url`` column (``URL``, ``image_url``), optionally ``caption``
  (``TEXT``, ``text``) and ``license`` (``LICENSE``, ``licence``);
- Parquet with the same columns.

The crawl fetches these images directly (no HTML page is requested) through the same validated,
polite image pipeline as every crawl: robots.txt and noai honoured, private addresses refused,
sizes bounded, resumable. The caption becomes the item's page text, where label looks for one.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from lora_factory.config import CrawlConfig
from lora_factory.errors import ConfigError

URL_KEYS = ("url", "URL", "image_url")
CAPTION_KEYS = ("caption", "TEXT", "text", "alt")
LICENCE_KEYS = ("license", "LICENSE", "licence")


def _pick(row: dict[str, Any], keys: tuple[str, ...]) -> str | None:
    for k in keys:
        v = row.get(k)
        if isinstance(v, str) and v.strip():
            return " ".join(v.split())
    return None


def _rows(path: Path) -> list[dict[str, Any]]:
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            return pq.read_table(path).to_pylist()
        except Exception as e:  # noqa: BLE001 - pyarrow raises many types for a bad file
            raise ConfigError(f"crawl.urls_file {path} is not a readable Parquet file ({e})") from None
    text = path.read_text(encoding="utf-8", errors="replace")
    if suffix in (".csv", ".tsv"):
        return list(csv.DictReader(text.splitlines(), delimiter="\t" if suffix == ".tsv" else ","))
    rows = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            url, _, caption = line.replace("\t", " ").partition(" ")
            rows.append({"url": url, "caption": caption.strip() or None})
    return rows


def read_url_list(path: Path) -> list[dict[str, str | None]]:
    """``[{url, caption, license}]`` from ``path``; one ``ConfigError`` line when unusable."""
    if not path.is_file():
        raise ConfigError(f"crawl.urls_file {path} does not exist: give a .txt, .csv or .parquet list of image URLs")
    rows = _rows(path)
    if rows and not any(_pick(r, URL_KEYS) for r in rows):
        raise ConfigError(f"crawl.urls_file {path} has no url column (one of {', '.join(URL_KEYS)}; "
                          f"found {', '.join(map(str, rows[0]))})")
    out = [{"url": _pick(r, URL_KEYS), "caption": _pick(r, CAPTION_KEYS), "license": _pick(r, LICENCE_KEYS)}
           for r in rows]
    return [r for r in out if r["url"]]


def url_list_images(config: CrawlConfig, topics: list[str]) -> dict[str, list[dict[str, Any]]]:
    """The list as the crawl's ``topics_to_images`` (every image under the run's first topic)."""
    rows = read_url_list(Path(config.urls_file or ""))
    if not rows:
        raise ConfigError(f"crawl.urls_file {config.urls_file} lists no image URLs")
    topic = topics[0] if topics else ""
    return {topic: [{
        "image_url": r["url"], "page_url": r["url"], "page_title": None, "topic": topic,
        "license": r["license"] or "unknown", "license_url": None, "author": None, "alt_text": r["caption"],
        "title_text": None, "figure_caption": None, "surrounding_text": r["caption"],
    } for r in rows]}
