"""Reading the text files a user hands us (profiles, topic lists, seed files).

Why one reader: every way such a file can be wrong (missing, a folder, unreadable, not UTF-8,
bad YAML) must be one ``ConfigError`` line that names the file and what to do, never a
traceback.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError


def read_user_text(path: Path, what: str) -> str:
    """The UTF-8 text of ``path``; ``what`` names the file in errors (``"topics file"``)."""
    if path.is_dir():
        raise ConfigError(f"{what} {path} is a directory: give the path of a file")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{what} {path} is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}): "
            "save it as UTF-8"
        ) from None


def yaml_problem(exc: yaml.YAMLError) -> str:
    """``line 3: mapping values are not allowed here`` (or the bare problem)."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or "unreadable"
    return f"line {mark.line + 1}: {problem}" if mark is not None else problem


def parse_user_yaml(text: str, where: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where} is not valid YAML ({yaml_problem(exc)})") from None


def read_topics_file(path: Path) -> list[str]:
    """Topics from a text file (one per line) or a YAML list / mapping with ``topics:``."""
    if not path.exists():
        raise ConfigError(f"topics file {path} does not exist")
    text = read_user_text(path, "topics file")
    yaml_file = path.suffix.lower() in (".yaml", ".yml")
    data: Any = parse_user_yaml(text, f"topics file {path}") if yaml_file else text.splitlines()
    if isinstance(data, dict):
        data = data.get("topics")
    if not isinstance(data, list):
        raise ConfigError(f"{path} must be a list of topics or a mapping with 'topics:'")
    return [str(t) for t in data]
