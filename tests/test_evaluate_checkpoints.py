"""Best checkpoint: the trainer's checkpoints load like the final LoRA, and scoring them on the
same images picks the planted better one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from lora_factory.errors import StageError
from tasks.evaluate.checkpoints import (
    CheckpointScore,
    as_lora_file,
    fidelity_score,
    last_checkpoints,
    pick_best,
    score_checkpoints,
)
from tasks.evaluate.embedders import load_embedder
from tasks.evaluate.generate import render
from tasks.evaluate.prompts import EvalPrompt
from training.checkpoints import WEIGHTS
from training.lora import LORA_WEIGHT_NAME
from training.trainer import train_lora

from .training_helpers import small_cfg, tiny_job, write_dataset

RES = 32
PROMPTS = [EvalPrompt("concept", "lfstyle, a yellow ellipse")]


@pytest.fixture(scope="module")
def run(model_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """3 steps, a checkpoint after each, the last 2 kept: (adapter folder, checkpoint folder)."""
    root = tmp_path_factory.mktemp("ckpt")
    data = write_dataset(root / "data", [(RES, RES)] * 2)
    cfg = small_cfg(resolution=RES, max_steps=3, batch_size=2, learning_rate=5e-2, checkpoint_every=1,
                    keep_checkpoints=2, export_kohya=False)
    train_lora(tiny_job(data, cfg, root / "lora", model_cache, checkpoint_dir=root / "checkpoints"))
    return root / "lora", root / "checkpoints"


def test_the_last_checkpoint_converts_to_the_final_lora_file(run, tmp_path: Path) -> None:
    lora, checkpoints = run
    kept = last_checkpoints(checkpoints, 5)
    assert [p.name for p in kept] == ["step-000002", "step-000003"]
    assert last_checkpoints(checkpoints, 0) == [] and last_checkpoints(checkpoints, 1) == kept[-1:]
    final = load_file(str(lora / LORA_WEIGHT_NAME))
    converted = load_file(str(as_lora_file(kept[-1], lora / LORA_WEIGHT_NAME, tmp_path / "c.safetensors")))
    assert converted.keys() == final.keys()
    assert all(torch.equal(converted[k], final[k]) for k in final)
    earlier = load_file(str(as_lora_file(kept[0], lora / LORA_WEIGHT_NAME, tmp_path / "e.safetensors")))
    assert any(not torch.equal(earlier[k], final[k]) for k in final)


def test_a_checkpoint_of_another_layout_is_one_line(run, tmp_path: Path) -> None:
    lora, checkpoints = run
    weights = load_file(str(checkpoints / "step-000003" / WEIGHTS))
    (tmp_path / "odd").mkdir()
    save_file(dict(list(weights.items())[:-1]), str(tmp_path / "odd" / WEIGHTS))
    with pytest.raises(StageError, match="does not match") as info:
        as_lora_file(tmp_path / "odd", lora / LORA_WEIGHT_NAME, tmp_path / "x.safetensors")
    assert "\n" not in str(info.value)


def test_scoring_picks_the_planted_better_checkpoint(run, model_cache: Path, tmp_path: Path) -> None:
    """Reference = the images step 2 renders; step 3's weights are planted as a zero LoRA
    (images of the base model). Under the weight-free pixels score step 2 must win although
    it is the older one."""
    from lora_factory.models import load_pipeline

    lora, checkpoints = run
    template = lora / LORA_WEIGHT_NAME
    files = {p.name: as_lora_file(p, template, tmp_path / p.name / LORA_WEIGHT_NAME) for p in last_checkpoints(checkpoints, 2)}
    planted = load_file(str(files["step-000003"]))
    save_file({k: torch.zeros_like(v) if ".up." in k else v for k, v in planted.items()}, str(files["step-000003"]))
    pipe = load_pipeline("tiny:sd", "sd15", model_cache, device="cpu")
    pipe.set_progress_bar_config(disable=True)
    kw = {"steps": 3, "guidance": 1.0, "resolution": RES, "batch_size": 2, "device": torch.device("cpu")}
    draw = lambda p: render(p, PROMPTS, [7, 8], "lora", **kw)  # noqa: E731
    pixels = load_embedder("pixels", "tiny:clip", model_cache)
    pipe.load_lora_weights(str(files["step-000002"].parent), weight_name=LORA_WEIGHT_NAME)
    reference = pixels.embed_images([s.image for s in draw(pipe)])
    pipe.unload_lora_weights()
    scores = score_checkpoints(pipe, files, draw, fidelity_score(pixels.embed_images, reference))
    assert [s.name for s in scores] == ["step-000002", "step-000003"]
    assert scores[0].score == pytest.approx(np.mean(reference @ reference.T), abs=1e-6)
    assert scores[0].score > scores[1].score
    assert pick_best(scores).name == "step-000002"


def test_pick_best_prefers_the_later_checkpoint_on_a_tie_and_needs_one() -> None:
    a, b = CheckpointScore("step-1", Path("a"), 0.5), CheckpointScore("step-2", Path("b"), 0.5)
    assert pick_best([a, b]).name == "step-2"
    assert pick_best([a, CheckpointScore("step-2", Path("b"), 0.4)]).name == "step-1"
    with pytest.raises(StageError, match="no checkpoint"):
        pick_best([])
