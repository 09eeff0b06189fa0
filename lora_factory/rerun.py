"""Resuming with new settings: the stages whose settings change run again, and so does every
stage downstream of them.

Why: a resume used to run only unfinished stages, so ``--resume RUN --set label.review_file=...``
(a reviewed caption sheet) changed nothing: label was done. An override that names a stage's
config section (``label.*``, ``train.*``...) with a value other than the run's marks that stage
and every stage that reads its outputs, directly or not (``catalog.downstream``), pending again.
A setting that names a file (``*_file``, e.g. ``label.review_file``) counts as changed whenever
it is given: the file may have been edited and saved under the same name. Giving a setting its
old value again (as a resume must for credentials) re-runs nothing, nor do overrides of other
sections (``models``, ``store``, ``home``...).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .catalog import STAGES, downstream
from .runstore import DONE, PENDING, RunDir
from .secrets import redact


def _recorded(config: Mapping[str, Any], dotted: str) -> Any:
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return _MISSING
        node = node[part]
    return node


_MISSING = object()


def stages_to_rerun(overrides: Mapping[str, Any], recorded: Mapping[str, Any] | None = None) -> list[str]:
    """The stages whose section an override changes (compared with ``recorded``, the run's
    config; every named section when it is not given), and everything downstream, in order."""
    changed = [str(key) for key, value in overrides.items()
               if recorded is None or str(key).endswith("_file")
               or _recorded(recorded, str(key)) != redact(value)]  # run.json keeps credentials masked
    named = {key.split(".", 1)[0] for key in changed} & set(STAGES)
    hit = {s for stage in named for s in downstream(stage)}
    return [s for s in STAGES if s in hit]


def mark_for_rerun(run: RunDir, stages: list[str]) -> list[str]:
    """Set the done ones of ``stages`` back to pending (their outputs stay until they are
    replaced); returns the stages that changed."""
    changed = [s for s in stages if run.stage_status(s) == DONE]
    for stage in changed:
        run.set_stage(stage, PENDING)
    return changed
