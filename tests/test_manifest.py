from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pytest

from lora_factory.errors import StageError
from lora_factory.manifest import (
    ITEM_SCHEMA,
    build_manifest,
    decision,
    explain,
    item_id_for,
    read_decisions,
    read_items,
    write_decisions,
    write_items,
)


def item(data: bytes, url: str, **extra) -> dict:
    iid = item_id_for(data)
    return {
        "item_id": iid, "image_path": f"images/{iid}.png", "image_url": url,
        "page_url": "http://site/page.html", "license": "CC-BY-4.0",
        "crawl_time": datetime(2026, 11, 21, tzinfo=UTC), "width": 100, "height": 80,
        "num_bytes": len(data), "mime_type": "image/png", **extra,
    }


def test_item_id_is_sha256_of_bytes() -> None:
    assert item_id_for(b"abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_items_round_trip_with_schema(tmp_path: Path) -> None:
    rows = [item(b"a", "http://site/a.png", alt_text="a fox"), item(b"b", "http://site/b.png")]
    write_items(tmp_path / "items.parquet", rows)
    back = read_items(tmp_path / "items.parquet")
    assert [r["item_id"] for r in back] == [r["item_id"] for r in rows]
    assert back[0]["alt_text"] == "a fox" and back[1]["alt_text"] is None
    assert back[0]["crawl_time"] == datetime(2026, 11, 21, tzinfo=UTC)


def test_schema_rejects_unknown_and_missing_columns(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not in the schema"):
        write_items(tmp_path / "x.parquet", [{**item(b"a", "u"), "colour": "red"}])
    broken = item(b"a", "u")
    del broken["page_url"]
    with pytest.raises((pa.ArrowInvalid, ValueError, TypeError)):
        write_items(tmp_path / "x.parquet", [broken])
    with pytest.raises(StageError, match="is missing"):
        read_items(tmp_path / "absent.parquet")


def test_a_drop_needs_a_reason() -> None:
    with pytest.raises(ValueError, match="needs a reason"):
        decision("abc", "curate", keep=False)


def test_manifest_joins_decisions_per_stage_and_explains(tmp_path: Path) -> None:
    a, b, c = item(b"a", "http://s/a.png"), item(b"b", "http://s/b.png"), item(b"c", "http://s/c.png")
    curate = [
        decision(a["item_id"], "curate", True),
        decision(b["item_id"], "curate", False, "exact_duplicate", dup_of=a["item_id"], detail="same pixels"),
        decision(c["item_id"], "curate", True),
    ]
    label = [decision(a["item_id"], "label", True), decision(c["item_id"], "label", False, "no_caption")]
    write_decisions(tmp_path / "d.parquet", curate)
    assert read_decisions(tmp_path / "d.parquet")[1]["dup_of"] == a["item_id"]
    table = build_manifest([a, b, c], {"curate": curate, "label": label})
    rows = {r["item_id"]: r for r in table.to_pylist()}
    assert rows[b["item_id"]]["curate_reason"] == "exact_duplicate"
    assert rows[b["item_id"]]["label_decision"] is None  # never reached label
    assert rows[c["item_id"]]["label_reason"] == "no_caption"
    assert set(ITEM_SCHEMA.names) <= set(table.column_names)

    why_b = explain(table, ["curate", "label"], "http://s/b.png")
    assert len(why_b) == 1 and "dropped by curate, reason exact_duplicate" in why_b[0]
    assert f"dup of {a['item_id'][:12]}" in why_b[0]
    assert "kept through curate, label" in explain(table, ["curate", "label"], a["item_id"][:10])[0]
    assert explain(table, ["curate"], "http://s/none.png") == []
