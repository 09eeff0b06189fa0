"""The evaluate stage on the tiny models: base vs LoRA on the same prompts, seeds and scheduler,
per-image metrics, findings, grid, report (tiny models)."""

from __future__ import annotations

import base64
import io
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lora_factory.config import EvaluateConfig, TrainConfig
from lora_factory.errors import StageError
from lora_factory.schemas import EvalResult
from tasks.evaluate import EvalSetup, evaluate_lora
from tasks.evaluate.generate import render
from tasks.evaluate.grid import cell_origin, cell_size, grid_size
from tasks.evaluate.prompts import EvalPrompt
from tasks.evaluate.stage import training_losses
from training.lora import LORA_WEIGHT_NAME
from training.trainer import train_lora

from .training_helpers import tiny_job, write_dataset

RES = 64
PROMPTS = [EvalPrompt("concept", "lfstyle, a yellow ellipse"),
           EvalPrompt("generalisation", "a <b>bold</b> & long prompt about a yellow rectangle at dusk, lfstyle"),
           EvalPrompt("leakage", "a yellow ellipse")]
EVAL_CFG = EvaluateConfig(num_inference_steps=3, guidance_scale=5.0, seed=1234, num_seeds=2, batch_size=4)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("dataset"), [(64, 64), (80, 64), (64, 96), (72, 72)])


@pytest.fixture(scope="module")
def lora_dir(dataset: Path, model_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = TrainConfig(resolution=RES, rank=4, learning_rate=3e-2, batch_size=4, max_steps=8, device="cpu")
    out = tmp_path_factory.mktemp("lora")
    train_lora(tiny_job(dataset, cfg, out, model_cache))
    return out


def setup_for(dataset: Path, lora_dir: Path, model_cache: Path) -> EvalSetup:
    return EvalSetup("tiny:sd", "sd15", "tiny:clip", model_cache, RES, "lfstyle",
                     sorted(dataset.glob("*.png")), training_losses(lora_dir))


@pytest.fixture(scope="module")
def evaluated(dataset: Path, lora_dir: Path, model_cache: Path, tmp_path_factory: pytest.TempPathFactory
              ) -> tuple[EvalResult, Path]:
    out = tmp_path_factory.mktemp("eval")
    result = evaluate_lora(lora_dir / LORA_WEIGHT_NAME, PROMPTS, EVAL_CFG, setup_for(dataset, lora_dir, model_cache), out)
    return result, out


def test_eval_json_has_every_metric_per_prompt_and_seed(evaluated) -> None:
    result, out = evaluated
    on_disk = json.loads((out / "eval.json").read_text())
    assert on_disk == result.model_dump(mode="json")
    assert [p["text"] for p in on_disk["prompts"]] == [p.text for p in PROMPTS]
    assert on_disk["seeds"] == [1234, 1235]
    assert len(on_disk["samples"]) == 2 * len(PROMPTS) * 2  # sides x prompts x seeds
    for row in on_disk["samples"]:
        assert (out / "images" / row["file"]).is_file()
        for metric in ("clip_t", "clip_i", "pixels_fidelity"):
            assert math.isfinite(row[metric]) and -1.0 <= row[metric] <= 1.0
    assert set(on_disk["scores"]) == {"overall_score", "fidelity_gain", "adherence_delta", "diversity",
                                      "copy_risk", "leakage"}
    assert all(v is not None and math.isfinite(v) for v in on_disk["scores"].values())
    assert on_disk["scores"]["adherence_delta"] == pytest.approx(
        on_disk["metrics"]["clip_t"]["lora"] - on_disk["metrics"]["clip_t"]["base"])
    assert [t["score"] for t in on_disk["thresholds"]] == ["adherence_delta"]
    assert on_disk["weight_delta_rms"] > 0
    assert on_disk["final_loss"] is not None


def test_base_and_lora_use_identical_seeds_and_scheduler(evaluated) -> None:
    result, _ = evaluated
    rows = result.model_dump()["samples"]
    base = [(r["prompt_index"], r["seed"]) for r in rows if r["side"] == "base"]
    lora = [(r["prompt_index"], r["seed"]) for r in rows if r["side"] == "lora"]
    assert base == lora == [(p, s) for p in range(len(PROMPTS)) for s in (1234, 1235)]
    assert result.model_dump()["scheduler"]["class"]  # one scheduler, checked equal after loading the LoRA


def test_lora_images_differ_from_base_images_with_the_same_seed(evaluated) -> None:
    _, out = evaluated
    for p in range(len(PROMPTS)):
        base = np.asarray(Image.open(out / "images" / f"base_p{p}_s1234.png"))
        lora = np.asarray(Image.open(out / "images" / f"lora_p{p}_s1234.png"))
        assert base.shape == lora.shape == (RES, RES, 3)
        assert not np.array_equal(base, lora)
    other_seed = np.asarray(Image.open(out / "images" / "base_p0_s1235.png"))
    assert not np.array_equal(np.asarray(Image.open(out / "images" / "base_p0_s1234.png")), other_seed)


def test_a_random_scorer_is_named_and_the_report_says_so(evaluated) -> None:
    result, out = evaluated
    assert result.random_scorers == ["clip"]  # pixels needs no weights: its numbers mean something
    assert any(f.code == "random_scorer" and "carry no meaning" in f.message for f in result.findings)
    page = (out / "report.html").read_text(encoding="utf-8")
    assert "random tiny model: the numbers it produces carry no meaning" in page


def test_batched_generation_gives_the_images_of_one_at_a_time(model_cache: Path) -> None:
    import torch

    from lora_factory.models import load_pipeline

    pipe = load_pipeline("tiny:sd", "sd15", model_cache)
    pipe.set_progress_bar_config(disable=True)
    kw = {"steps": 2, "guidance": 5.0, "resolution": RES, "device": torch.device("cpu")}
    batched = render(pipe, PROMPTS[:2], [5, 6], "base", batch_size=4, **kw)
    single = render(pipe, PROMPTS[:2], [5, 6], "base", batch_size=1, **kw)
    assert [(s.prompt_index, s.seed) for s in batched] == [(s.prompt_index, s.seed) for s in single]
    for a, b in zip(batched, single, strict=True):
        assert np.abs(a.pixels - b.pixels).max() < 1e-3


def test_grid_has_one_row_per_prompt_and_base_lora_pairs_per_seed(evaluated) -> None:
    _, out = evaluated
    grid = Image.open(out / "grid.png").convert("RGB")
    cell = cell_size(RES)
    assert grid.size == grid_size(len(PROMPTS), 2, RES)
    for p in range(len(PROMPTS)):
        for j, seed in enumerate((1234, 1235)):
            for side in ("base", "lora"):
                expected = Image.open(out / "images" / f"{side}_p{p}_s{seed}.png").convert("RGB")
                expected = expected.resize((cell, cell), Image.Resampling.NEAREST)
                x, y = cell_origin(p, j, side, RES)
                assert np.array_equal(np.asarray(grid.crop((x, y, x + cell, y + cell))), np.asarray(expected))


def test_report_is_self_contained_with_grid_thresholds_findings_and_copies(evaluated) -> None:
    _, out = evaluated
    page = (out / "report.html").read_text(encoding="utf-8")
    grids = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert Image.open(io.BytesIO(base64.b64decode(grids[0]))).size == Image.open(out / "grid.png").size
    assert "&lt;b&gt;bold&lt;/b&gt; &amp; long" in page and "<b>bold</b>" not in page
    assert ">= 0.0" in page  # the adherence threshold
    assert "nearest training image" in page and page.count("alt='training'") == 3
    assert "http" not in page  # nothing fetched from elsewhere


def test_same_seed_gives_the_same_evaluation(evaluated, dataset: Path, lora_dir: Path, model_cache: Path,
                                              tmp_path: Path) -> None:
    result, first = evaluated
    again = evaluate_lora(lora_dir / LORA_WEIGHT_NAME, PROMPTS, EVAL_CFG.model_copy(update={"batch_size": 3}),
                          setup_for(dataset, lora_dir, model_cache), tmp_path)
    assert again.scores == pytest.approx(result.scores, abs=1e-4)
    assert np.array_equal(np.asarray(Image.open(first / "images" / "lora_p1_s1235.png")),
                          np.asarray(Image.open(tmp_path / "images" / "lora_p1_s1235.png")))


def test_missing_lora_or_prompts_are_stage_errors(dataset: Path, lora_dir: Path, model_cache: Path,
                                                   tmp_path: Path) -> None:
    setup = setup_for(dataset, lora_dir, model_cache)
    with pytest.raises(StageError, match="no LoRA weights"):
        evaluate_lora(tmp_path / "nothing" / LORA_WEIGHT_NAME, PROMPTS, EVAL_CFG, setup, tmp_path / "out")
    with pytest.raises(StageError, match="no prompts"):
        evaluate_lora(lora_dir / LORA_WEIGHT_NAME, [], EVAL_CFG, setup, tmp_path / "out")
