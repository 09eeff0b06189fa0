"""Names derived from user text (topics, concepts) for places that restrict their characters.

A topic is data and is kept verbatim in run.json, parquet columns and MLflow tag values. Where
it becomes part of a *name* (an MLflow metric or param key, a file name, a Redis key, a Prefect
run name) it goes through ``topic_key``: a short ASCII slug that is always safe, plus a hash of
the exact text whenever the slug is not the text itself, so two topics never share a key.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Sequence

MAX_SLUG = 48
MLFLOW_MAX_KEY = 250
_SAFE_TOPIC = re.compile(r"[a-z0-9][a-z0-9_-]{0,47}")
_MLFLOW_BAD = re.compile(r"[^A-Za-z0-9_\-. /]")
# Control characters, and lone surrogates (undecodable command-line bytes): neither can be
# written as UTF-8 text or shown. Unassigned code points are not refused: an emoji newer than
# this Python's Unicode tables is one.
_CONTROL = {"Cc", "Cs"}


def short_hash(text: str, n: int = 8) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:n]


def slugify(text: str, max_len: int = MAX_SLUG) -> str:
    """Lower-case ASCII words joined by ``-`` (accents folded, everything else dropped)."""
    folded = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii").lower()
    words = re.findall(r"[a-z0-9]+", folded)
    return "-".join(words)[:max_len].strip("-")


def topic_key(topic: str) -> str:
    """A key for ``topic`` that is a valid MLflow name, file name, Redis key and URL part.

    ``lighthouse`` stays ``lighthouse``; ``rock & roll`` becomes ``rock-roll-<hash>``, and a
    topic with no ASCII letters at all (``🚀``) becomes ``topic-<hash>``.
    """
    if _SAFE_TOPIC.fullmatch(topic):
        return topic
    slug = slugify(topic) or "topic"
    return f"{slug}-{short_hash(topic)}"


def registered_model_name(concept: str, topics: Sequence[str]) -> str | None:
    """The registered model a run's LoRA competes in: ``deploy.concept`` or, when empty, a key
    of the topics; None when there is neither."""
    if concept.strip():
        return concept.strip()
    return topic_key(" + ".join(topics)) if topics else None


def mlflow_key(name: str) -> str:
    """``name`` as an MLflow metric/param/tag key: allowed characters only, no path escapes,
    at most 250 characters. A valid key comes back unchanged; a changed one gets a hash of the
    original, so two different names never collide."""
    clean = _MLFLOW_BAD.sub("_", name)
    clean = "/".join(p for p in clean.split("/") if p not in ("", ".", "..")) or "_"
    if clean.startswith(".."):  # MLflow reads a leading ".." as a path escape
        clean = "_" + clean
    if clean == name and len(name) <= MLFLOW_MAX_KEY:
        return name
    suffix = f"-{short_hash(name)}"
    return clean[: MLFLOW_MAX_KEY - len(suffix)] + suffix


def control_characters(text: str) -> list[str]:
    """The control characters (and lone surrogates) in ``text``, as ``U+XXXX`` names."""
    return [f"U+{ord(c):04X}" for c in text if unicodedata.category(c) in _CONTROL]


def run_label(topics: list[str], max_len: int = 120) -> str:
    """A human label for a list of topics (Prefect flow-run names, MLflow run names): printable
    text only, cut to ``max_len`` with a count of the topics left out."""
    clean = [" ".join("".join(c if c.isprintable() else " " for c in t).split()) for t in topics]
    text = ", ".join(clean)
    if len(text) <= max_len:
        return text
    shown: list[str] = []
    for topic in clean:
        if len(", ".join([*shown, topic])) > max_len - 12:
            break
        shown.append(topic)
    if not shown:
        shown = [clean[0][: max_len - 13] + "…"]
    rest = len(clean) - len(shown)
    return ", ".join(shown) + (f" (+{rest} more)" if rest else "")
