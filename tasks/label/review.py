"""The review loop: ``label/captions.csv`` for a person to edit, and the edits fed back.

A reviewer copies the sheet, fixes captions (or sets ``keep`` to ``no``) and resumes the run with
``--set label.review_file=PATH``; label runs again and every stage after it. A caption that
differs from the machine's (as the sheet recorded it) wins and is recorded with source ``human``; untouched rows keep the
machine's caption and source, so a re-run with the same sheet changes nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lora_factory.catalog_formats import Csv
from lora_factory.errors import ConfigError, StageError
from lora_factory.schemas import REVIEW_COLUMNS

HUMAN = "human"
REVIEW_DROP = "human_review"  # the drop reason of rows set to keep = no
_YES = {"yes", "y", "true", "1", "keep", ""}
_NO = {"no", "n", "false", "0", "drop"}


@dataclass(frozen=True)
class Edit:
    caption: str
    keep: bool
    sheet_machine_caption: str  # what the sheet says the machine wrote ('' if the column is gone)

    def changed(self, machine_caption: str) -> bool:
        """Whether the person changed the caption: against the sheet's own record of the machine
        caption, so a machine caption that moved since (a new tagger answer) is not taken for an edit."""
        return self.caption != " ".join((self.sheet_machine_caption or machine_caption).split())


def review_rows(labels: list[dict[str, Any]], keep: str = "yes") -> list[dict[str, Any]]:
    """One sheet row per labelled image, in the REVIEW_COLUMNS order (``keep``: "no" for the rows
    a reviewer dropped, so the sheet fed back keeps them dropped)."""
    return [{"item_id": lab["item_id"], "file_name": lab["file_name"], "caption": lab["caption"], "keep": keep,
             "caption_source": lab["caption_source"], "machine_caption": lab["machine_caption"],
             "license": lab.get("license") or "", "page_url": lab.get("page_url") or ""} for lab in labels]


def read_review(path_text: str, known: set[str]) -> dict[str, Edit]:
    """The edits in ``label.review_file``, by item id. One line per mistake in the sheet."""
    path = Path(path_text).expanduser()
    where = f"label.review_file = {str(path.absolute())!r}"
    if not path.is_file():
        raise ConfigError(f"{where} does not exist: copy label/captions.csv of the run, edit it, and pass that path")
    try:
        rows = Csv(REVIEW_COLUMNS[:4]).read(path)
    except StageError as e:
        raise ConfigError(f"{where}: {e}") from None
    edits: dict[str, Edit] = {}
    for line, row in enumerate(rows, start=2):
        iid = row["item_id"].strip()
        if iid not in known:
            raise ConfigError(f"{where}, line {line}: item_id {iid[:16]!r} is not an image of this run: "
                              "use the captions.csv of the same run")
        keep = row["keep"].strip().lower()
        if keep not in _YES | _NO:
            raise ConfigError(f"{where}, line {line}: keep is {row['keep']!r}: write yes or no")
        caption = " ".join(row["caption"].split())
        if not caption and keep not in _NO:
            raise ConfigError(f"{where}, line {line}: the caption is empty: write one, or set keep to no")
        edits[iid] = Edit(caption, keep not in _NO, " ".join(row.get("machine_caption", "").split()))
    return edits
