"""Cache keys for stages: a finished stage runs again only when what it depends on changed.

Why: a re-run (``--resume RUN``, with or without ``--set``) used to recompute every unfinished
stage and guess, from the names of the overridden settings, which finished ones to redo. Here a
stage's key is a hash of three parts, all declared in the catalog (``StageSpec``):

- ``inputs``: the content digests of the outputs it reads, recorded by the stages that wrote
  them (``run.json`` ``stages.<s>.outputs``), so an upstream stage that ran again and wrote the
  same bytes does not invalidate its readers;
- ``settings``: the config sections (or dotted settings) it reads, credentials masked (a new
  password is not a new result), with the content of every ``*_file`` setting (a review sheet
  edited under the same name is a change), and the run's topics for the crawl;
- ``code``: the source of the stage's own modules (``StageSpec.code``), so a fixed bug re-runs
  the stage it was in; kernel changes do not invalidate finished work;
- ``external`` (only for stages that declare ``StageSpec.external``): fingerprints of what the
  stage reads outside the run directory (``lora_factory.external_inputs``: deploy's registry
  champion), recorded as the stage left them, so a champion another run moved is a miss.

A stage that is done and whose recorded key equals the key computed now is a hit and is skipped;
anything else runs (a failed or killed stage resumes from its own checkpoints). Each decision is
recorded in ``run.json`` (``stages.<s>.cache``) and as ``cache.<stage>`` tags on the MLflow run.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from .catalog import STAGES, StageSpec, spec
from .external_inputs import fingerprints, what_changed
from .runstore import DONE, PENDING
from .secrets import redact

_MISSING = "<unset>"
# Why a stage finished before keys existed is kept: nothing recorded says what it was made from,
# and running it again could cost hours (training); a change from now on re-runs it (record_in).
LEGACY_HIT = "done before cache keys were recorded: kept unchecked, keyed from now on"
# Likewise a stage done before its external inputs were keyed: kept when the rest of its key holds.
LEGACY_EXTERNAL_HIT = "inputs, settings and code unchanged; external inputs were not recorded: keyed from now on"


@dataclass(frozen=True)
class CacheDecision:
    """Whether ``stage`` runs, and the one-line reason users see."""

    stage: str
    hit: bool
    reason: str
    key: str
    parts: dict[str, Any]

    def as_record(self) -> dict[str, Any]:
        return {"decision": "hit" if self.hit else "miss", "reason": self.reason, "key": self.key}

    def record_in(self, entry: dict[str, Any]) -> None:
        """Write this decision into the stage's run.json entry. A stage kept from before keys
        (or its external inputs' fingerprints) were recorded takes today's key as its own:
        without one, no later change would ever re-run it."""
        entry["cache"] = self.as_record()
        if self.hit and self.parts and entry.get("key_parts") != self.parts:
            entry.update(key=self.key, key_parts=self.parts)


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def path_digest(path: Path) -> str:
    """sha256 of a file, or of a folder's relative paths and file contents (sorted)."""
    h = hashlib.sha256()
    if path.is_file():
        files = [(path.name, path)]
    elif path.is_dir():
        files = sorted((p.relative_to(path).as_posix(), p) for p in path.rglob("*") if p.is_file())
    else:
        return _MISSING
    for rel, file in files:
        h.update(rel.encode() + b"\0")
        with file.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        h.update(b"\0")
    return h.hexdigest()


def output_digests(stage_spec: StageSpec, out_dir: Path) -> dict[str, str]:
    """The digest of each output ``stage_spec`` wrote into ``out_dir``: recorded when it finishes."""
    return {o.key: path_digest(o.at(out_dir)) for o in stage_spec.writes if o.at(out_dir).exists()}


def _setting(config: Mapping[str, Any], dotted: str) -> Any:
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return _MISSING
        node = node[part]
    return node


def _with_file_contents(value: Any, name: str = "") -> Any:
    """``value`` with every ``*_file`` setting that names a readable file paired with its digest."""
    if isinstance(value, Mapping):
        return {k: _with_file_contents(v, str(k)) for k, v in value.items()}
    if name.endswith("_file") and isinstance(value, str) and value and Path(value).is_file():
        return {"path": value, "sha256": path_digest(Path(value))}
    return value


def settings_digest(stage_spec: StageSpec, config: Mapping[str, Any], topics: list[str]) -> str:
    picked = {name: _with_file_contents(redact(_setting(config, name)), name) for name in stage_spec.settings}
    if not stage_spec.reads:  # the first stage: the topics are its input
        picked["topics"] = list(topics)
    return _digest(json.dumps(picked, sort_keys=True, default=str).encode())


@cache
def code_digest(modules: tuple[str, ...]) -> str:
    """sha256 of the Python sources of ``modules`` (packages: every .py file under them)."""
    h = hashlib.sha256()
    for name in modules:
        found = importlib.util.find_spec(name)
        origin = Path(found.origin) if found is not None and found.origin else None
        if origin is None:
            h.update(f"{name}:{_MISSING}".encode())
            continue
        files = sorted(origin.parent.rglob("*.py")) if origin.name == "__init__.py" else [origin]
        for file in files:
            h.update(f"{name}/{file.relative_to(origin.parent).as_posix()}\0".encode())
            h.update(file.read_bytes())
    return h.hexdigest()


def recorded_digest(state: Mapping[str, Any], output_key: str, stage_dir: Any) -> str:
    """An input's digest as its writer recorded it; computed from the files for runs that
    finished before digests were recorded (``stage_dir``: a callable giving the stage's folder)."""
    stage = output_key.split(".", 1)[0]
    recorded = state["stages"].get(stage, {}).get("outputs", {})
    if output_key in recorded:
        return str(recorded[output_key])
    from .catalog import OUTPUTS

    return path_digest(OUTPUTS[output_key].at(stage_dir(stage)))


def key_parts(state: Mapping[str, Any], stage: str, config: Mapping[str, Any], stage_dir: Any) -> dict[str, Any]:
    s = spec(stage)
    topics = list(state.get("topics", []))
    parts: dict[str, Any] = {
        "inputs": {o.key: recorded_digest(state, o.key, stage_dir) for o in s.reads},
        "settings": settings_digest(s, config, topics),
        "code": code_digest(s.code),
    }
    if s.external:  # absent otherwise: the keys other stages recorded stay valid
        parts["external"] = fingerprints(s.external, config, topics)
    return parts


def settled_parts(parts: Mapping[str, Any], state: Mapping[str, Any], stage: str,
                  config: Mapping[str, Any]) -> dict[str, Any]:
    """``parts`` with the external inputs as the finished stage left them. Why: deploy moves the
    champion itself; keyed on the champion it saw before, its own promotion would be a miss."""
    s = spec(stage)
    if not s.external:
        return dict(parts)
    return {**parts, "external": fingerprints(s.external, config, list(state.get("topics", [])))}


def _without_external(parts: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in parts.items() if k != "external"}


def key_of(parts: Mapping[str, Any]) -> str:
    return _digest(json.dumps(parts, sort_keys=True).encode())[:16]


def decide(state: Mapping[str, Any], stage: str, config: Mapping[str, Any], stage_dir: Any) -> CacheDecision:
    """Hit when ``stage`` is done with the key it would have now; else a miss that says why."""
    entry = state["stages"].get(stage, {})
    status = entry.get("status", PENDING)
    if status != DONE:  # a pending stage has no outputs yet: its inputs may not exist either
        why = "never ran" if status == PENDING else f"was {status}: runs again (resuming its checkpoints)"
        return CacheDecision(stage, False, why, "", {})
    parts = key_parts(state, stage, config, stage_dir)
    key = key_of(parts)
    old = entry.get("key_parts")
    if old is None:
        return CacheDecision(stage, True, LEGACY_HIT, key, parts)
    if entry.get("key") == key:
        return CacheDecision(stage, True, "inputs, settings and code unchanged", key, parts)
    if "external" in parts and "external" not in old and entry.get("key") == key_of(_without_external(parts)):
        return CacheDecision(stage, True, LEGACY_EXTERNAL_HIT, key, parts)
    return CacheDecision(stage, False, _what_changed(old, parts), key, parts)


def all_hits(state: Mapping[str, Any], config: Mapping[str, Any], stage_dir: Any) -> list[CacheDecision] | None:
    """Every stage's decision when all are hits (a re-run with nothing to do), else None.

    Why None at the first miss: a later stage's decision depends on what the missed stage will
    write, so only the run that runs it can decide the rest. With no miss, nothing is written
    and these are the decisions the flow would make, so a caller can skip the flow."""
    decisions = []
    for stage in STAGES:
        decision = decide(state, stage, config, stage_dir)
        if not decision.hit:
            return None
        decisions.append(decision)
    return decisions


def _what_changed(old: Mapping[str, Any], new: Mapping[str, Any]) -> str:
    changed = [f"input {k}" for k, v in new["inputs"].items() if old.get("inputs", {}).get(k) != v]
    if old.get("settings") != new["settings"]:
        changed.append("settings")
    if old.get("code") != new["code"]:
        changed.append("code")
    before = old.get("external", {})
    moved = [what_changed(k, before.get(k), v) for k, v in new.get("external", {}).items() if before.get(k) != v]
    if moved and not changed:
        return "; ".join(moved)
    return "changed: " + (", ".join(changed + moved) or "key")
