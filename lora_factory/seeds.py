"""Seed files: topic -> page (or sitemap) URLs, from YAML (``{topic: [url, ...]}``) or CSV
(``topic,url`` rows), for ``crawl.source: seeds``.

Why in the kernel: the CLI's ``--seeds FILE`` and the crawl's sources read the same files, and
the kernel may not import the crawler (``spiders`` imports ``lora_factory``, not the reverse).
Every malformed file is one ``ConfigError`` line that names the file (and the line, for CSV).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .errors import ConfigError
from .textfiles import parse_user_yaml, read_user_text

SUFFIXES = (".yaml", ".yml", ".csv")


def _check_url(url: str, where: str) -> str:
    url = url.strip()
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{where}: {url!r} is not an http(s) URL")
    return url


def parse_seed_yaml(text: str, where: str = "seed file") -> dict[str, list[str]]:
    """``{topic: url | [url, ...]}`` -> topic -> URLs (order kept, duplicates dropped)."""
    data: Any = parse_user_yaml(text, where)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must map each topic to a list of URLs")
    out: dict[str, list[str]] = {}
    for topic, urls in data.items():
        if isinstance(urls, str):
            urls = [urls]
        if not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
            raise ConfigError(f"{where}: topic {topic!r} must map to a URL or a list of URLs")
        seen = out.setdefault(str(topic).strip(), [])
        for u in urls:
            u = _check_url(u, f"{where}, topic {topic!r}")
            if u not in seen:
                seen.append(u)
    return out


def parse_seed_csv(text: str, where: str = "seed file") -> dict[str, list[str]]:
    """``topic,url`` rows (an optional ``topic,url`` header, ``#`` comments) -> topic -> URLs."""
    out: dict[str, list[str]] = {}
    reader = csv.reader(io.StringIO(text))
    try:
        for n, row in enumerate(reader, start=1):
            if not row or not "".join(row).strip() or row[0].lstrip().startswith("#"):
                continue
            if len(row) != 2:
                raise ConfigError(f"{where}, line {n}: expected 'topic,url', got {len(row)} fields")
            topic, url = row[0].strip(), row[1].strip()
            if n == 1 and (topic.lower(), url.lower()) == ("topic", "url"):
                continue
            if not topic:
                raise ConfigError(f"{where}, line {n}: empty topic")
            urls = out.setdefault(topic, [])
            url = _check_url(url, f"{where}, line {n}")
            if url not in urls:
                urls.append(url)
    except csv.Error as exc:
        raise ConfigError(f"{where}, line {reader.line_num}: not CSV ({exc})") from None
    return out


def load_seed_file(path: str | Path) -> dict[str, list[str]]:
    """Read a ``.yaml``/``.yml`` or ``.csv`` seed file; ``ConfigError`` when it is missing,
    malformed or lists no URL at all."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise ConfigError(f"seed file {path} must be .yaml, .yml or .csv (topic,url rows)")
    text = read_user_text(path, "seed file")
    seeds = parse_seed_csv(text, str(path)) if suffix == ".csv" else parse_seed_yaml(text, str(path))
    if not any(seeds.values()):
        raise ConfigError(
            f"seed file {path} lists no seed URLs: add 'topic: [url, ...]' (YAML) "
            "or 'topic,url' rows (CSV)"
        )
    return seeds
