"""Seed files: topic -> page URLs from YAML (``{topic: [url, ...]}``) or CSV (``topic,url`` rows)."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from lora_factory.errors import ConfigError


def _check_url(url: str, where: str) -> str:
    url = url.strip()
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{where}: {url!r} is not an http(s) URL")
    return url


def parse_seed_yaml(text: str, where: str = "seed file") -> dict[str, list[str]]:
    """``{topic: url | [url, ...]}`` -> topic -> URLs (order kept, duplicates dropped)."""
    try:
        data: Any = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where} is not valid YAML: {exc}") from None
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
    for n, row in enumerate(csv.reader(io.StringIO(text)), start=1):
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
    return out


def load_seed_file(path: str | Path) -> dict[str, list[str]]:
    """Read a ``.yaml``/``.yml`` or ``.csv`` seed file; raises ``ConfigError`` when malformed."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read seed file {path}: {exc.strerror}") from None
    if path.suffix.lower() == ".csv":
        return parse_seed_csv(text, str(path))
    if path.suffix.lower() in (".yaml", ".yml"):
        return parse_seed_yaml(text, str(path))
    raise ConfigError(f"seed file {path} must be .yaml, .yml or .csv")
