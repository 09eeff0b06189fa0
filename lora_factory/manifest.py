"""The manifest: one row per item, keyed by the sha256 of the image bytes.

Why a schema module: every stage reads what the previous one wrote, and "why is this image not
in my dataset?" must always have an answer. Crawl writes provenance (``ITEM_SCHEMA``); every
stage that keeps or drops items writes decisions (``DECISION_SCHEMA``); ``build_manifest`` joins
them into ``run.json``'s sibling ``manifest.parquet`` with a decision and reason per stage.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from .catalog import CRAWL_ITEMS, decision_outputs
from .errors import StoreError
from .schemas import DECISION_SCHEMA, ITEM_SCHEMA
from .tables import read_table, write_table

# Reasons a stage may give for dropping an item. Stages may add their own (``str``), but the
# common ones are named here so reports and tests agree on spelling.
DROP_REASONS = (
    "exact_duplicate",
    "near_duplicate",
    "semantic_duplicate",
    "low_alignment",
    "off_topic",
    "wrong_language",
    "ad",
    "blurry",
    "too_dark",
    "overexposed",
    "low_information",
    "too_small",
    "too_large",
    "bad_aspect",
    "composition_cap",
    "source_cap",
    "license",
    "noai",
    "corrupt",
    "no_caption",
    "held_out",
)

MANIFEST_NAME = "manifest.parquet"  # at the run's top level, beside run.json
KEEP = "keep"
DROP = "drop"

def item_id_for(data: bytes) -> str:
    """The item key: sha256 of the exact image bytes as downloaded."""
    return hashlib.sha256(data).hexdigest()


def write_items(path: Path, rows: Sequence[Mapping[str, Any]]) -> Path:
    return write_table(path, rows, ITEM_SCHEMA)


def read_items(path: Path) -> list[dict[str, Any]]:
    return read_table(path, ITEM_SCHEMA).to_pylist()


def decision(
    item_id: str,
    stage: str,
    keep: bool,
    reason: str | None = None,
    *,
    score: float | None = None,
    dup_of: str | None = None,
    detail: str | None = None,
) -> dict[str, Any]:
    """One decision row. A drop must say why."""
    if not keep and not reason:
        raise ValueError(f"dropping {item_id} in {stage} needs a reason")
    return {
        "item_id": item_id,
        "stage": stage,
        "decision": KEEP if keep else DROP,
        "reason": None if keep else reason,
        "score": score,
        "dup_of": dup_of,
        "detail": detail,
    }


def write_decisions(path: Path, rows: Iterable[Mapping[str, Any]]) -> Path:
    return write_table(path, list(rows), DECISION_SCHEMA)


def read_decisions(path: Path) -> list[dict[str, Any]]:
    return read_table(path, DECISION_SCHEMA).to_pylist()


def build_manifest(
    items: Sequence[Mapping[str, Any]], decisions_by_stage: Mapping[str, Sequence[Mapping[str, Any]]]
) -> pa.Table:
    """Join provenance with each stage's decision: columns ``<stage>_decision``/``_reason``.

    An item a stage never saw (because an earlier stage dropped it) has nulls for that stage.
    """
    rows = {it["item_id"]: dict(it) for it in items}
    stage_cols: list[str] = []
    for stage, decisions in decisions_by_stage.items():
        cols = [f"{stage}_decision", f"{stage}_reason", f"{stage}_dup_of", f"{stage}_detail"]
        stage_cols += cols
        for d in decisions:
            row = rows.get(d["item_id"])
            if row is None:
                continue
            row[cols[0]], row[cols[1]] = d["decision"], d["reason"]
            row[cols[2]], row[cols[3]] = d.get("dup_of"), d.get("detail")
    fields = list(ITEM_SCHEMA) + [pa.field(c, pa.string()) for c in stage_cols]
    schema = pa.schema(fields)
    return pa.Table.from_pylist(
        [{**{c: None for c in stage_cols}, **r} for r in rows.values()], schema=schema
    )


def explain(manifest: pa.Table, stages: Sequence[str], key: str,
            kept_note: Callable[[str], str] | None = None) -> list[str]:
    """Answer "why is this image (item id prefix, image URL or page URL) not in my dataset?".
    ``kept_note(item_id)`` adds to the line of an item every stage kept (its caption...)."""
    lines: list[str] = []
    for row in manifest.to_pylist():
        urls = {row["image_url"], row["page_url"], *(row.get("other_urls") or [])}
        if not (row["item_id"].startswith(key) or key in urls):
            continue
        verdict = f"{row['item_id'][:12]} {row['image_url']}"
        for stage in stages:
            d = row.get(f"{stage}_decision")
            if d is None:
                continue
            if d == DROP:
                extra = f" (dup of {row[f'{stage}_dup_of'][:12]})" if row.get(f"{stage}_dup_of") else ""
                detail = f": {row[f'{stage}_detail']}" if row.get(f"{stage}_detail") else ""
                lines.append(f"{verdict}: dropped by {stage}, reason {row[f'{stage}_reason']}{extra}{detail}")
                break
        else:
            note = kept_note(row["item_id"]) if kept_note else ""
            lines.append(f"{verdict}: kept through {', '.join(s for s in stages if row.get(f'{s}_decision'))}{note}")
    return lines


def refresh_run_manifest(run: Any, stages: Sequence[str]) -> pa.Table | None:
    """Rebuild ``<run>/manifest.parquet`` from crawl items and every committed stage's decisions.

    ``run`` is a ``RunDir``. Called after each stage commits, so the run-level manifest always
    answers "why is this image not in my dataset?" for everything done so far.
    """
    import io

    try:
        items = CRAWL_ITEMS.read(run.stage_path(CRAWL_ITEMS.stage)).to_pylist()
    except StoreError:
        return None
    by_stage: dict[str, list[dict[str, Any]]] = {}
    decisions = {o.stage: o for o in decision_outputs()}
    for stage in stages:
        output = decisions.get(stage)
        if output is None:
            continue
        try:
            folder = run.stage_path(stage)
        except StoreError:
            continue
        if output.exists(folder):
            by_stage[stage] = output.read(folder).to_pylist()
    table = build_manifest(items, by_stage)
    buf = io.BytesIO()
    pq.write_table(table, buf)
    run.write_file(MANIFEST_NAME, buf.getvalue())
    return table
