"""The manifest: one row per item, keyed by the sha256 of the image bytes.

Why a schema module: every stage reads what the previous one wrote, and "why is this image not
in my dataset?" must always have an answer. Crawl writes provenance (``ITEM_SCHEMA``); every
stage that keeps or drops items writes decisions (``DECISION_SCHEMA``); ``build_manifest`` joins
them into ``run.json``'s sibling ``manifest.parquet`` with a decision and reason per stage.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from .errors import StageError, StoreError

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

KEEP = "keep"
DROP = "drop"

ITEM_SCHEMA = pa.schema(
    [
        pa.field("item_id", pa.string(), nullable=False),  # sha256 hex of the image bytes
        pa.field("image_path", pa.string(), nullable=False),  # relative to the crawl dir
        pa.field("image_url", pa.string(), nullable=False),
        pa.field("page_url", pa.string(), nullable=False),
        pa.field("page_title", pa.string()),
        pa.field("alt_text", pa.string()),
        pa.field("title_text", pa.string()),
        pa.field("figure_caption", pa.string()),
        pa.field("surrounding_text", pa.string()),
        pa.field("topic", pa.string()),
        pa.field("license", pa.string(), nullable=False),  # SPDX-ish id or "unknown"
        pa.field("license_url", pa.string()),
        pa.field("author", pa.string()),
        pa.field("robots", pa.string()),  # the opt-out decision that let it through
        pa.field("crawl_time", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("width", pa.int32(), nullable=False),
        pa.field("height", pa.int32(), nullable=False),
        pa.field("num_bytes", pa.int64(), nullable=False),
        pa.field("mime_type", pa.string(), nullable=False),
        pa.field("other_urls", pa.list_(pa.string())),  # same bytes seen at these image URLs
    ]
)

DECISION_SCHEMA = pa.schema(
    [
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("stage", pa.string(), nullable=False),
        pa.field("decision", pa.string(), nullable=False),  # "keep" | "drop"
        pa.field("reason", pa.string()),  # one of DROP_REASONS (or a stage's own) when dropped
        pa.field("score", pa.float64()),  # the value the reason was judged on, if any
        pa.field("dup_of", pa.string()),  # item_id of the representative kept instead
        pa.field("detail", pa.string()),  # a human sentence: "12x12 px < min_side 64"
    ]
)


def item_id_for(data: bytes) -> str:
    """The item key: sha256 of the exact image bytes as downloaded."""
    return hashlib.sha256(data).hexdigest()


def _table(rows: Sequence[Mapping[str, Any]], schema: pa.Schema) -> pa.Table:
    names = set(schema.names)
    for i, row in enumerate(rows):
        unknown = set(row) - names
        if unknown:
            raise ValueError(f"row {i} has columns not in the schema: {sorted(unknown)}")
    return pa.Table.from_pylist([dict(r) for r in rows], schema=schema)


def write_table(path: Path, rows: Sequence[Mapping[str, Any]], schema: pa.Schema) -> Path:
    """Validate ``rows`` against ``schema`` and write them as parquet (atomically)."""
    table = _table(rows, schema)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp)
    tmp.replace(path)
    return path


def read_table(path: Path, schema: pa.Schema) -> pa.Table:
    """Read a parquet file and check it carries every column of ``schema``."""
    if not path.exists():
        raise StageError(f"{path} is missing: run the stage that writes it first")
    try:
        table = pq.read_table(path, use_threads=False)  # small files; see cli.explain on threads
    except (pa.ArrowException, OSError) as e:
        raise StageError(
            f"{path} cannot be read ({' '.join(str(e).split())[:200]}): the file is damaged (stages "
            "write whole files, so something else changed it); restore it or start a new run"
        ) from None
    missing = [n for n in schema.names if n not in table.column_names]
    if missing:
        raise StageError(f"{path} lacks columns {missing}: it was written by another version")
    return table.select(schema.names).cast(schema)


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


def explain(manifest: pa.Table, stages: Sequence[str], key: str) -> list[str]:
    """Answer "why is this image (item id prefix, image URL or page URL) not in my dataset?"."""
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
            lines.append(f"{verdict}: kept through {', '.join(s for s in stages if row.get(f'{s}_decision'))}")
    return lines


def refresh_run_manifest(run: Any, stages: Sequence[str]) -> pa.Table | None:
    """Rebuild ``<run>/manifest.parquet`` from crawl items and every committed stage's decisions.

    ``run`` is a ``RunDir``. Called after each stage commits, so the run-level manifest always
    answers "why is this image not in my dataset?" for everything done so far.
    """
    import io

    try:
        crawl_dir = run.stage_path("crawl")
    except StoreError:
        return None
    items = read_items(crawl_dir / "items.parquet")
    by_stage: dict[str, list[dict[str, Any]]] = {}
    for stage in stages:
        try:
            path = run.stage_path(stage) / "decisions.parquet"
        except StoreError:
            continue
        if path.exists():
            by_stage[stage] = read_decisions(path)
    table = build_manifest(items, by_stage)
    buf = io.BytesIO()
    pq.write_table(table, buf)
    run.write_file("manifest.parquet", buf.getvalue())
    return table
