"""The evaluate stage logic: base vs LoRA images, CLIP-T scores, grid and report (tiny models)."""

from __future__ import annotations

import base64
import io
import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from lora_factory.config import EvaluateConfig, TrainConfig
from lora_factory.errors import StageError
from tasks.evaluate import HEADER_H, LABEL_W, cell_size, evaluate_lora, grid_size
from training.trainer import train_lora

from .training_helpers import tiny_job, write_dataset

RES = 64
PROMPTS = ["lfstyle, a yellow ellipse", "a <b>bold</b> & long prompt about a yellow rectangle at dusk, lfstyle"]
EVAL_CFG = EvaluateConfig(num_inference_steps=3, guidance_scale=5.0, seed=1234)


@pytest.fixture(scope="module")
def lora_dir(model_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = write_dataset(tmp_path_factory.mktemp("dataset"), [(64, 64), (80, 64), (64, 96), (72, 72)])
    cfg = TrainConfig(resolution=RES, rank=4, learning_rate=3e-2, batch_size=4, max_steps=8, device="cpu")
    out = tmp_path_factory.mktemp("lora")
    train_lora(tiny_job(data, cfg, out, model_cache))
    return out


@pytest.fixture(scope="module")
def evaluated(lora_dir: Path, model_cache: Path, tmp_path_factory: pytest.TempPathFactory
              ) -> tuple[dict[str, Any], Path]:
    out = tmp_path_factory.mktemp("eval")
    result = evaluate_lora("tiny:sd", "sd15", lora_dir, PROMPTS, EVAL_CFG, "tiny:clip", model_cache,
                           out, resolution=RES)
    return result, out


def test_eval_json_has_a_finite_clip_t_per_prompt(evaluated) -> None:
    result, out = evaluated
    on_disk = json.loads((out / "eval.json").read_text())
    assert on_disk == result
    assert on_disk["prompts"] == PROMPTS
    for side in ("base", "lora"):
        scores = on_disk[side]["clip_t"]
        assert len(scores) == len(PROMPTS)
        assert all(math.isfinite(s) and -1.0 <= s <= 1.0 for s in scores)
        assert on_disk[side]["clip_t_mean"] == pytest.approx(np.mean(scores))
    assert on_disk["clip_t_delta"] == pytest.approx(
        on_disk["lora"]["clip_t_mean"] - on_disk["base"]["clip_t_mean"])
    assert on_disk["seed"] == 1234 and on_disk["steps"] == 3


def test_lora_images_differ_from_base_images_with_the_same_seed(evaluated) -> None:
    _, out = evaluated
    for i in range(len(PROMPTS)):
        base = np.asarray(Image.open(out / "images" / f"base_{i}.png"))
        lora = np.asarray(Image.open(out / "images" / f"lora_{i}.png"))
        assert base.shape == lora.shape == (RES, RES, 3)
        assert not np.array_equal(base, lora)


def test_grid_has_base_on_top_and_lora_below_one_column_per_prompt(evaluated) -> None:
    _, out = evaluated
    grid = Image.open(out / "grid.png").convert("RGB")
    cell = cell_size(RES)
    assert cell == 128  # 64 px images are blown up to be visible
    assert grid.size == grid_size(len(PROMPTS), RES) == (LABEL_W + 2 * cell, HEADER_H + 2 * cell)
    for i in range(len(PROMPTS)):
        for row, side in enumerate(("base", "lora")):
            expected = Image.open(out / "images" / f"{side}_{i}.png").convert("RGB")
            expected = expected.resize((cell, cell), Image.Resampling.NEAREST)
            x, y = LABEL_W + i * cell, HEADER_H + row * cell
            assert np.array_equal(np.asarray(grid.crop((x, y, x + cell, y + cell))), np.asarray(expected))


def test_report_is_self_contained_with_the_grid_and_escaped_prompts(evaluated) -> None:
    _, out = evaluated
    page = (out / "report.html").read_text(encoding="utf-8")
    match = re.search(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert match
    embedded = Image.open(io.BytesIO(base64.b64decode(match.group(1))))
    assert embedded.size == Image.open(out / "grid.png").size
    assert "&lt;b&gt;bold&lt;/b&gt; &amp; long" in page and "<b>bold</b>" not in page
    assert page.count("<tr>") == 1 + len(PROMPTS) + 1  # header, one per prompt, mean
    assert "http" not in page  # nothing fetched from elsewhere


def test_same_seed_gives_the_same_evaluation(evaluated, lora_dir: Path, model_cache: Path,
                                              tmp_path: Path) -> None:
    result, first = evaluated
    again = evaluate_lora("tiny:sd", "sd15", lora_dir, PROMPTS, EVAL_CFG, "tiny:clip", model_cache,
                          tmp_path, resolution=RES)
    assert again == result
    for name in ("base_0.png", "lora_1.png"):
        assert np.array_equal(np.asarray(Image.open(first / "images" / name)),
                              np.asarray(Image.open(tmp_path / "images" / name)))


def test_missing_lora_or_prompts_are_stage_errors(lora_dir: Path, model_cache: Path, tmp_path: Path) -> None:
    with pytest.raises(StageError, match="no LoRA weights"):
        evaluate_lora("tiny:sd", "sd15", tmp_path / "nothing", PROMPTS, EVAL_CFG, "tiny:clip",
                      model_cache, tmp_path / "out", resolution=RES)
    with pytest.raises(StageError, match="no prompts"):
        evaluate_lora("tiny:sd", "sd15", lora_dir, [], EVAL_CFG, "tiny:clip", model_cache,
                      tmp_path / "out", resolution=RES)
