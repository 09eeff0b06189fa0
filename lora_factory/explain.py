""""Why is this image (not) in my dataset?": every stage's answer for one image or page.

The run-level manifest holds every item the crawl kept, with each later stage's decision. Images
the crawl itself refused (a 404, an undecodable file, robots.txt, a noai opt-out...) never got
an item id; their reasons are in ``crawl/rejected.parquet`` and, for pages, ``crawl/pages.parquet``.
For images that made it into the dataset the answer also gives the caption they train with and
whether training used them.
"""

from __future__ import annotations

import io
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from .catalog import CRAWL_PAGES, CRAWL_REJECTED, LABEL_LABELS, Output
from .errors import StageError, StoreError
from .manifest import MANIFEST_NAME, explain, refresh_run_manifest
from .runstore import DONE, STAGES, RunDir


def _stage_rows(run: RunDir, output: Output) -> list[dict[str, Any]]:
    """The rows of a finished stage's table, or none when the stage has not run."""
    if run.stage_status(output.stage) != DONE:
        return []
    try:
        return output.read(run.stage_path(output.stage)).to_pylist()
    except (StageError, StoreError, pa.ArrowException, OSError):
        return []


def read_manifest(run: RunDir) -> pa.Table | None:
    """The run's manifest; rebuilt from the stage outputs when it is missing or unreadable
    (it is derived data), ``None`` when the crawl has not finished."""
    try:
        data = run.store.read_bytes(f"{run.key}/{MANIFEST_NAME}")
        # pyarrow 25 aborts at interpreter exit in short processes that read a buffer with threads.
        return pq.read_table(io.BytesIO(data), use_threads=False)
    except (StoreError, pa.ArrowException, OSError, ValueError):
        return refresh_run_manifest(run, STAGES)


def _crawl_lines(run: RunDir, key: str) -> list[str]:
    lines = [f"page {p['url']}: {p['decision']}" + (f", reason {p['reason']}" if p.get("reason") else "")
             + (f": {p['detail']}" if p.get("detail") else "")
             for p in _stage_rows(run, CRAWL_PAGES) if p["url"] == key]
    lines += [f"{r['url']}: refused by crawl, reason {r['reason']}" + (f": {r['detail']}" if r.get("detail") else "")
              + (f" (on page {r['page_url']})" if r.get("page_url") and r["page_url"] != key else "")
              for r in _stage_rows(run, CRAWL_REJECTED) if key in (r["url"], r.get("page_url"))]
    return lines


def _training_note(run: RunDir, item_id: str, labels: dict[str, dict[str, Any]]) -> str:
    label = labels.get(item_id)
    if label is None:
        return ""
    note = f"; caption ({label['caption_source']}): {label['caption']!r}"
    status = run.stage_status("train")
    return note + ("; trained on" if status == DONE else f"; not trained on yet (train is {status})")


def explain_key(run: RunDir, key: str) -> list[str]:
    """Every line the run's outputs hold about ``key`` (item id prefix, image URL or page URL)."""
    lines = _crawl_lines(run, key)
    manifest = read_manifest(run)
    if manifest is None:
        return lines
    labels = {row["item_id"]: row for row in _stage_rows(run, LABEL_LABELS)}
    return lines + explain(manifest, STAGES, key, lambda item_id: _training_note(run, item_id, labels))
