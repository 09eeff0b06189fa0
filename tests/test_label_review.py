"""The review loop: captions.csv out, a person's edits back in (source "human"), mistakes in the
sheet as one line each, and the edited sheet applied on a re-label (the resume that re-runs label and what follows
is in test_stage_keys and test_e2e)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from lora_factory.catalog import CURATE_DATASET, LABEL_CAPTIONS, LABEL_DECISIONS, LABEL_LABELS
from lora_factory.errors import ConfigError
from lora_factory.profiles import load_config
from spiders.sources.demo_site import generate_demo_site
from tasks.label.stage import LabelModels, run_label

from .curate_demo_items import demo_items


@pytest.fixture(scope="module")
def labelled(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("review")
    site = generate_demo_site(tmp / "site", seed=0)
    items, truth = demo_items(site, tmp / "crawl")
    clean = [it for it in items if truth[it["item_id"]]["kind"] == "clean" and it["license"].startswith("CC")][:6]
    CURATE_DATASET.write(tmp / "curate", clean)
    cfg = load_config("tiny", {}, environ={})
    run_label(tmp / "curate", tmp / "crawl", tmp / "first", cfg, LabelModels())
    return {"tmp": tmp, "cfg": cfg, "rows": LABEL_CAPTIONS.read(tmp / "first")}


def _write(path: Path, rows: list[dict], columns: list[str] | None = None) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns or list(rows[0]), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def _relabel(labelled: dict, sheet: Path, name: str) -> Path:
    cfg = labelled["cfg"].model_copy(deep=True)
    cfg.label.review_file = str(sheet)
    out = labelled["tmp"] / name
    run_label(labelled["tmp"] / "curate", labelled["tmp"] / "crawl", out, cfg, LabelModels())
    return out


def test_edited_captions_win_as_human_and_rows_set_to_no_are_dropped(labelled: dict) -> None:
    rows = [dict(r) for r in labelled["rows"]]
    assert all(r["caption_source"] == "alt_text" and r["caption"] == r["machine_caption"] for r in rows)
    rows[0]["caption"] = "a lighthouse painted by hand, seen from the jetty"  # no trigger word: it is added
    rows[1]["caption"] = "  lfstyle,  a   cactus   at noon "  # spacing alone is not an edit...
    rows[1]["caption"] = "lfstyle, a cactus at noon"  # ...but new words are
    rows[2]["keep"] = "no"
    out = _relabel(labelled, _write(labelled["tmp"] / "edited.csv", rows), "edited")
    labels = {lab["item_id"]: lab for lab in LABEL_LABELS.read(out).to_pylist()}
    first, second = labels[rows[0]["item_id"]], labels[rows[1]["item_id"]]
    assert first["caption"] == "lfstyle, a lighthouse painted by hand, seen from the jetty"
    assert first["caption_source"] == "human" and first["machine_caption"] == rows[0]["machine_caption"]
    assert second["caption"] == "lfstyle, a cactus at noon" and second["caption_source"] == "human"
    assert rows[2]["item_id"] not in labels
    drop = next(d for d in LABEL_DECISIONS.read(out).to_pylist() if d["item_id"] == rows[2]["item_id"])
    assert (drop["decision"], drop["reason"]) == ("drop", "human_review")
    untouched = [labels[r["item_id"]] for r in rows[3:]]
    assert all(lab["caption_source"] == "alt_text" for lab in untouched)
    # The training folder carries the edit: sidecar and metadata.
    txt = (out / "dataset" / first["file_name"]).with_suffix(".txt").read_text().strip()
    assert txt == first["caption"]
    assert "lfstyle, a lighthouse painted by hand" in (out / "dataset" / "metadata.jsonl").read_text()
    # The new sheet records the human caption and the dropped row (keep = no), so feeding it back
    # again changes nothing more.
    assert {r["item_id"]: r["keep"] for r in LABEL_CAPTIONS.read(out)}[rows[2]["item_id"]] == "no"
    again = _relabel(labelled, out / "captions.csv", "again")
    assert LABEL_LABELS.read(again).to_pylist() == LABEL_LABELS.read(out).to_pylist()


@pytest.mark.parametrize(("change", "message"), [
    ("missing", "does not exist: copy label/captions.csv"),
    ("columns", "lacks the columns ['keep']"),
    ("unknown", "line 2: item_id 'ffffffffffffffff' is not an image of this run"),
    ("keep", "line 3: keep is 'maybe': write yes or no"),
    ("empty", "line 2: the caption is empty: write one, or set keep to no"),
])
def test_a_bad_review_sheet_is_one_line(labelled: dict, change: str, message: str) -> None:
    rows = [dict(r) for r in labelled["rows"]]
    sheet = labelled["tmp"] / f"bad-{change}.csv"
    if change == "columns":
        _write(sheet, rows, [c for c in rows[0] if c != "keep"])
    elif change != "missing":
        if change == "unknown":
            rows[0]["item_id"] = "f" * 64
        elif change == "keep":
            rows[1]["keep"] = "maybe"
        else:
            rows[0]["caption"] = " "
        _write(sheet, rows)
    with pytest.raises(ConfigError) as e:
        _relabel(labelled, sheet, f"bad-{change}")
    assert message in str(e.value) and "\n" not in str(e.value) and "label.review_file" in str(e.value)


def test_a_sheet_saved_by_a_spreadsheet_still_reads(labelled: dict) -> None:
    """Excel adds a byte-order mark and CRLF line ends; a person may add a notes column."""
    rows = [dict(r, notes="checked") for r in labelled["rows"]]
    rows[0]["caption"] = "lfstyle, a lighthouse, edited in a spreadsheet"
    sheet = labelled["tmp"] / "excel.csv"
    with sheet.open("w", newline="", encoding="utf-8-sig") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]), lineterminator="\r\n")
        writer.writeheader()
        writer.writerows(rows)
    out = _relabel(labelled, sheet, "excel")
    labels = {lab["item_id"]: lab for lab in LABEL_LABELS.read(out).to_pylist()}
    assert labels[rows[0]["item_id"]]["caption"] == "lfstyle, a lighthouse, edited in a spreadsheet"
