"""Model references: what a profile's ``models.*`` string means and where its files are.

A reference is one of
- ``tiny:<name>``: a small seeded model of a real architecture, built once into the cache;
- a local directory in the library's on-disk format (``/path``, ``./path``, ``~/path``, an existing
  relative path, or ``local-dir:<path>`` as open_clip spells it);
- a Hugging Face hub id (``org/name``, or ``hf-hub:org/name`` as open_clip spells it).

Why one resolver: every loader gets a local directory and calls the library's own loading code on
it, so a tiny model, a copied checkout and a hub snapshot all take the same path.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from lora_factory.errors import ModelUnavailableError
from lora_factory.models.hub import field_name, resolve_hub
from lora_factory.models.tiny import ALIASES, TINY_MODELS, canonical_name, tiny_model_dir

RefKind = Literal["tiny", "local", "hub"]

TINY_PREFIX = "tiny:"
_HUB_PREFIX = "hf-hub:"
_LOCAL_PREFIX = "local-dir:"
# Hub ids: "name" or "org/name"; letters, digits, '-', '_', '.'; no leading '.' or '-'.
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")


@dataclass(frozen=True)
class ModelRef:
    """A parsed reference: its kind and the tiny name, path or repo id it points at."""

    raw: str
    kind: RefKind
    target: str


def parse_ref(ref: str) -> ModelRef:
    """Classify ``ref``; an existing path beats a look-alike hub id, as in ``from_pretrained``."""
    text = ref.strip()
    if not text:
        raise ValueError("empty model reference")
    if text.startswith(TINY_PREFIX):
        return ModelRef(ref, "tiny", text[len(TINY_PREFIX) :].strip())
    if text.startswith(_HUB_PREFIX):
        return ModelRef(ref, "hub", text[len(_HUB_PREFIX) :].strip())
    if text.startswith(_LOCAL_PREFIX):
        return ModelRef(ref, "local", text[len(_LOCAL_PREFIX) :].strip())
    looks_like_path = text.startswith(("/", ".", "~")) or "\\" in text or text.count("/") > 1
    if looks_like_path or Path(text).exists() or not _HUB_ID.fullmatch(text):
        return ModelRef(ref, "local", text)
    return ModelRef(ref, "hub", text)


def is_random_ref(ref: str) -> bool:
    """A ``tiny:`` reference is random-init: scores it gives carry no meaning."""
    return ref.strip().startswith(TINY_PREFIX)


def tiny_names() -> list[str]:
    """Every accepted ``tiny:`` name, aliases included."""
    return [*TINY_MODELS, *ALIASES]


def resolve_ref(ref: str, role: str, cache_dir: Path) -> Path:
    """A local directory in the real on-disk format for ``ref`` (config key ``models.<role>``).

    Tiny models are built under ``cache_dir/tiny/``; hub ids come from the Hugging Face cache (or
    the hub). Raises ``ModelUnavailableError`` with one line naming the key, the reference and the
    way out.
    """
    key = field_name(role)
    try:
        parsed = parse_ref(ref)
    except ValueError:
        raise ModelUnavailableError(
            f"{key} is empty: set it to a hub id, a local directory or tiny:<name>"
        ) from None
    if parsed.kind == "tiny":
        name = canonical_name(parsed.target)
        if name is None:
            known = ", ".join(TINY_PREFIX + n for n in tiny_names())
            raise ModelUnavailableError(f"{key} = {ref!r} is not a tiny model: use one of {known}")
        return tiny_model_dir(name, Path(cache_dir))
    if parsed.kind == "local":
        path = Path(parsed.target).expanduser()
        if not path.is_dir():
            raise ModelUnavailableError(
                f"{key} = {ref!r}: {path.absolute()} is not a directory: set {key} to an "
                "existing model directory or a hub id, or use --profile tiny"
            )
        return path.resolve()
    return resolve_hub(parsed.target, role)


def loadable_ref(ref: str, cache_dir: Path) -> str:
    """What ``DiffusionPipeline.from_pretrained`` can load for ``ref``: the hub id for a hub
    reference (never the weights), else the local directory it resolves to (a ``tiny:`` model is
    built there first; ``from_pretrained`` cannot read ``tiny:<name>``)."""
    parsed = parse_ref(ref)
    if parsed.kind == "hub":
        return parsed.target
    return str(resolve_ref(ref, "base", cache_dir))
