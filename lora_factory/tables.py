"""Parquet tables checked against their schema: the one way stages read and write tables."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from .errors import StageError


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
