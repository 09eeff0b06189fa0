"""Resuming with new settings: the stages whose settings change run again, and so does every
stage downstream of them.

Why: a resume used to run only unfinished stages, so ``--resume RUN --set label.review_file=...``
(a reviewed caption sheet) changed nothing: label was done. An override that names a stage's
config section (``label.*``, ``train.*``...) now marks that stage and every stage that reads its
outputs, directly or not (``catalog.downstream``), pending again. Naming the section is enough,
even with the value it had: the file it points at may have changed (an edited review sheet saved
under the same name). Overrides of other sections (``models``, ``store``, ``home``...) re-run nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .catalog import STAGES, downstream
from .runstore import DONE, PENDING, RunDir


def stages_to_rerun(overrides: Mapping[str, Any]) -> list[str]:
    """The stages an override's section names, and everything downstream, in stage order."""
    named = {str(key).split(".", 1)[0] for key in overrides} & set(STAGES)
    hit = {s for stage in named for s in downstream(stage)}
    return [s for s in STAGES if s in hit]


def mark_for_rerun(run: RunDir, stages: list[str]) -> list[str]:
    """Set the done ones of ``stages`` back to pending (their outputs stay until they are
    replaced); returns the stages that changed."""
    changed = [s for s in stages if run.stage_status(s) == DONE]
    for stage in changed:
        run.set_stage(stage, PENDING)
    return changed
