"""Curate, label, tune and the deploy gate as plain functions on small real files."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from PIL import Image

from lora_factory.catalog import CURATE_STATS, LABEL_CAPTION_STATS, TUNE_TRAIN_CONFIG
from lora_factory.config import CurateConfig, EvaluateConfig, LabelConfig, TrainConfig
from lora_factory.errors import StageError
from lora_factory.manifest import item_id_for, write_items
from lora_factory.schemas import EvalResult, Finding
from tasks._text import clean_text
from tasks.curate import curate_items, run_curate
from tasks.evaluate import judge
from tasks.label import run_label
from tasks.label.candidates import page_candidates
from tasks.tune import run_tune
from training.tuner import TuneRequest, TuneStats, family_row, recommend


def _save(crawl: Path, img: Image.Image, fmt: str, **item) -> dict:
    import io

    buf = io.BytesIO()
    img.save(buf, fmt, **({"compress_level": 1} if fmt == "PNG" and item.pop("alt_level", False) else {}))
    data = buf.getvalue()
    iid = item_id_for(data)
    rel = f"images/{iid}.{fmt.lower()}"
    (crawl / "images").mkdir(parents=True, exist_ok=True)
    (crawl / rel).write_bytes(data)
    return {
        "item_id": iid, "image_path": rel, "image_url": f"http://s/{iid[:6]}", "page_url": "http://s/p",
        "license": item.pop("license", "CC-BY-4.0"), "crawl_time": datetime(2026, 1, 1, tzinfo=UTC),
        "width": img.width, "height": img.height, "num_bytes": len(data), "mime_type": f"image/{fmt.lower()}",
        **item,
    }


def _textured(size: tuple[int, int], colour: tuple[int, int, int], seed: int) -> Image.Image:
    """A colour with seeded blocky texture: sharp and well exposed, so only the planted defects
    (size, duplicate pixels, decoding) decide (a flat colour is rightly low_information/blurry)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    w, h = size
    blocks = rng.integers(-60, 60, size=(h // 8 + 1, w // 8 + 1, 1))
    noise = np.kron(blocks, np.ones((8, 8, 1)))[:h, :w]
    return Image.fromarray(np.clip(np.array(colour) + noise, 0, 255).astype("uint8"))


@pytest.fixture
def crawl_dir(tmp_path: Path) -> tuple[Path, list[dict]]:
    crawl = tmp_path / "crawl"
    red = _textured((96, 96), (200, 60, 60), 0)
    items = [
        _save(crawl, red, "PNG", alt_text="a red lighthouse", license="unknown"),
        _save(crawl, red, "PNG", alt_level=True, alt_text="red lighthouse again"),  # same pixels
        _save(crawl, _textured((24, 24), (40, 40, 220), 1), "PNG", alt_text="icon"),
        _save(crawl, _textured((128, 80), (60, 200, 60), 2), "JPEG", alt_text="IMG_1234.jpg",
              figure_caption="A green sailboat, click to enlarge"),
    ]
    (crawl / "images" / "broken.png").write_bytes(b"not an image")
    items.append({**items[2], "item_id": "f" * 64, "image_path": "images/broken.png"})
    write_items(crawl / "items.parquet", items)
    return crawl, items


def test_curate_drops_with_reasons(crawl_dir, tmp_path: Path) -> None:
    crawl, items = crawl_dir
    result = curate_items(items, crawl, CurateConfig(min_side=64))
    reasons = {d["item_id"]: (d["decision"], d["reason"], d["dup_of"]) for d in result.decisions}
    assert reasons[items[2]["item_id"]] == ("drop", "too_small", None)
    assert reasons["f" * 64][1] == "corrupt"
    # Of the two identical-pixel copies, the one with a known licence represents the group.
    assert reasons[items[1]["item_id"]] == ("keep", None, None)
    assert reasons[items[0]["item_id"]] == ("drop", "exact_duplicate", items[1]["item_id"])
    assert {k["item_id"] for k in result.kept} == {items[1]["item_id"], items[3]["item_id"]}
    assert result.counts() == {"kept": 2, "dropped": 3, "drop_too_small": 1, "drop_corrupt": 1,
                               "drop_exact_duplicate": 1}
    out = tmp_path / "curate"
    out.mkdir()
    run_curate(crawl, CurateConfig(min_side=64), out)
    report = (out / "report.html").read_text()
    assert "exact_duplicate" in report and "data:image/png;base64," in report


def test_curate_names_the_filter_when_nothing_survives(crawl_dir, tmp_path: Path) -> None:
    crawl, _ = crawl_dir
    with pytest.raises(StageError, match="no images left after curation: 'too_small' removed 4 of 5"):
        run_curate(crawl, CurateConfig(min_side=4096), tmp_path)


def test_clean_text_and_captions() -> None:
    assert clean_text("IMG_1234.jpg") == ""
    assert clean_text("  A\u00a0red   fox — click to enlarge ") == "A red fox —"
    sources = LabelConfig().caption_sources
    (boat,) = page_candidates([{"alt_text": "DSC0042", "figure_caption": "A boat, click to enlarge"}], sources, 60)
    assert [(c.source, c.text) for c in boat.candidates] == [("figure_caption", "A boat")]


def test_label_and_tune_write_a_training_folder(crawl_dir, tmp_path: Path) -> None:
    crawl, _ = crawl_dir
    curate = tmp_path / "curate"
    curate.mkdir()
    run_curate(crawl, CurateConfig(min_side=64), curate)
    label = tmp_path / "label"
    from lora_factory.profiles import load_config

    result = run_label(curate, crawl, label, load_config("tiny", {"label.trigger_word": "tok"}, environ={}))
    meta = [json.loads(line) for line in (label / "dataset" / "metadata.jsonl").read_text().splitlines()]
    assert sorted(m["text"] for m in meta) == ["tok, A green sailboat", "tok, red lighthouse again"]
    for m in meta:
        assert (label / "dataset" / m["file_name"]).is_file()
        assert (label / "dataset" / (Path(m["file_name"]).stem + ".txt")).read_text().strip() == m["text"]
    assert len(result.labels) == 2
    stats = LABEL_CAPTION_STATS.read(label)
    assert (stats.num_images, stats.captioned, stats.coverage, stats.words_max) == (2, 2, 1.0, 3)
    assert stats.trigger_word == "tok" and stats.tag_frequency == {"a green sailboat": 1, "red lighthouse again": 1}

    cfg = load_config("tiny", {"train.batch_size": 8, "tune.strategy": "profile"}, environ={})
    tune = tmp_path / "tune"
    tune.mkdir()
    rec = run_tune(CURATE_STATS.read(curate), LABEL_CAPTION_STATS.read(label), cfg, tune)
    assert rec.request.stats.num_images == 2 and rec.config.batch_size == 2
    assert TUNE_TRAIN_CONFIG.read(tune) == rec.config
    assert "lowered from 8 to 2" in (tune / "rationale.md").read_text()


def test_tuner_keeps_a_feasible_profile() -> None:
    rec = recommend(TuneRequest(TuneStats(num_images=10), family_row("sd15"), base=TrainConfig(batch_size=2)),
                    "profile")
    assert rec.config == TrainConfig(batch_size=2)
    assert {c.source for c in rec.choices.values()} == {"profile"}


def _evaluated(adherence: float, overall: float, cfg: EvaluateConfig, **extra) -> EvalResult:
    result = EvalResult(base_ref="b", family="sd15", lora_path="l", verdict="fail",
                        scores={"adherence_delta": adherence, "overall_score": overall}, **extra)
    return judge(result, cfg)


def test_the_evaluation_verdict_follows_its_thresholds_and_findings() -> None:
    """evaluate's ``judge``; the gate's own truth table (thresholds, champion) is in test_deploy."""
    cfg = EvaluateConfig(min_scores={"adherence_delta": 0.0}, max_scores={"copy_risk": 0.2})
    assert _evaluated(0.02, 0.30, EvaluateConfig()).verdict == "pass"
    assert _evaluated(-0.01, 0.5, EvaluateConfig(min_scores={"adherence_delta": 0.0})).verdict == "fail"
    assert _evaluated(0.02, 0.3, cfg).verdict == "fail"  # copy_risk has a threshold but no value
    broken = _evaluated(0.02, 0.3, EvaluateConfig(), findings=[
        Finding(code="black_images", severity="error", message="3 of 4 LoRA images are black")])
    assert broken.verdict == "fail"
    warned = _evaluated(0.02, 0.3, EvaluateConfig(), findings=[Finding(code="x", severity="warning", message="m")])
    assert warned.verdict == "pass"


def test_unknown_score_thresholds_are_config_errors() -> None:
    with pytest.raises(ValueError, match="unknown scores"):
        EvaluateConfig(min_scores={"clip_t_typo": 0.1})
