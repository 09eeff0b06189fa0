"""The review loop: captions.csv out, a person's edits back in (source "human"), mistakes in the
sheet as one line each, and a resume with label.review_file re-running label and every stage after."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from lora_factory.catalog import CURATE_DATASET, LABEL_CAPTIONS, LABEL_DECISIONS, LABEL_LABELS
from lora_factory.errors import ConfigError
from lora_factory.profiles import load_config
from lora_factory.rerun import stages_to_rerun
from lora_factory.runstore import DONE, PENDING
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


def test_overrides_name_the_stages_to_run_again() -> None:
    assert stages_to_rerun({"label.review_file": "x.csv"}) == ["label", "tune", "train", "evaluate", "deploy"]
    assert stages_to_rerun({"train.max_steps": 5, "evaluate.seed": 1}) == ["train", "evaluate", "deploy"]
    assert stages_to_rerun({"crawl.max_pages": 3})[0] == "crawl"
    assert stages_to_rerun({"models.base": "tiny:sd", "home": "/x", "store.root": "/y"}) == []
    recorded = {"train": {"max_steps": 5}, "crawl": {"redis_url": "redis://:***@h"}, "label": {"review_file": "x.csv"}}
    assert stages_to_rerun({"train.max_steps": 5, "crawl.redis_url": "redis://:secret@h"}, recorded) == []
    assert stages_to_rerun({"train.max_steps": 6}, recorded) == ["train", "evaluate", "deploy"]
    assert stages_to_rerun({"label.review_file": "x.csv"}, recorded)[0] == "label"  # the file may have changed


def test_resume_with_a_review_file_marks_label_and_downstream_pending(tmp_path: Path) -> None:
    from lora_factory import runlock
    from lora_factory.lifecycle import pending_stages, resume_run, start_run

    cfg = load_config("tiny", {"home": str(tmp_path / "home")}, environ={})
    ref = start_run(cfg, ["lighthouse"])
    run = ref.run_dir()
    runlock.release(run)  # as the process that started it would at its end
    for stage in ("crawl", "curate", "label", "tune", "train", "evaluate", "deploy"):
        run.set_stage(stage, DONE)
    assert pending_stages(ref) == []
    again = resume_run(cfg, ref.run_id, {"label.review_file": str(tmp_path / "sheet.csv")})
    assert pending_stages(again) == ["label", "tune", "train", "evaluate", "deploy"]
    state = run.state()
    assert state["stages"]["curate"]["status"] == DONE and state["stages"]["label"]["status"] == PENDING
    assert state["resumes"][-1]["rerun"] == ["label", "tune", "train", "evaluate", "deploy"]
    assert again.config.label.review_file == str(tmp_path / "sheet.csv")
    runlock.release(run)
    # Resuming with nothing that names a stage re-runs nothing that is done.
    for stage in pending_stages(again):
        run.set_stage(stage, DONE)
    assert pending_stages(resume_run(cfg, ref.run_id, {"store.root": cfg.store.root})) == []
