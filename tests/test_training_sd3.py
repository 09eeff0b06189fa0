"""The SD3 family on ``tiny:sd3`` (CPU), the second flow-matching transformer: training lowers the
loss, the diffusers file loads through ``load_lora_weights`` with every key, the evaluator renders
with it, and the tuner has its rows (an SD3 base once stopped at the tune stage)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from lora_factory.models import load_pipeline
from tests.training_helpers import lora_tensors, sd3_output, small_cfg, tiny_job, write_dataset
from training.families import family_for
from training.lora import LORA_WEIGHT_NAME

EIGHT = [(64, 64), (80, 64), (64, 80), (96, 96), (72, 64), (64, 72), (128, 96), (96, 128)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, model_cache: Path) -> tuple[Path, list[float]]:
    """One short overfitting run on eight images, shared by the module."""
    from training.trainer import train_lora

    root = tmp_path_factory.mktemp("sd3")
    dataset = write_dataset(root / "eight", EIGHT)
    cfg = small_cfg(max_steps=24, batch_size=4, learning_rate=1e-2, export_kohya=False)
    result = train_lora(tiny_job(dataset, cfg, root / "lora", model_cache, base_ref="tiny:sd3", family=None))
    return root / "lora", result.losses


def test_overfitting_eight_images_lowers_the_flow_matching_loss(trained: tuple[Path, list[float]]) -> None:
    lora_dir, losses = trained
    assert np.mean(losses[-8:]) < np.mean(losses[:8]) - 0.05, losses
    keys = lora_tensors(lora_dir)
    # The default targets: attention of both streams of the joint blocks (SD3.5's second attention is not one).
    assert any(".transformer_blocks.1.attn.add_q_proj." in k for k in keys)
    assert not any(".attn2." in k for k in keys)
    with safe_open(str(lora_dir / LORA_WEIGHT_NAME), "pt") as f:
        meta = f.metadata()
    assert meta["modelspec.architecture"] == "stable-diffusion-v3-medium/lora"
    assert meta["modelspec.prediction_type"] == "flow"


def test_the_diffusers_file_loads_with_every_key_and_changes_the_output(trained: tuple[Path, list[float]],
                                                                        model_cache: Path) -> None:
    from peft.utils import get_peft_model_state_dict

    lora_dir, _ = trained
    pipe = load_pipeline("tiny:sd3", None, model_cache)
    base = sd3_output(pipe)
    pipe.load_lora_weights(str(lora_dir), weight_name=LORA_WEIGHT_NAME, adapter_name="x")
    loaded = {f"transformer.{k}" for k in get_peft_model_state_dict(pipe.transformer, adapter_name="x")}
    saved = lora_tensors(lora_dir)
    assert loaded == set(saved)  # nothing missing, nothing extra
    for key in saved:
        module, kind = key.removeprefix("transformer.").rsplit(".lora_", 1)
        layer = pipe.transformer.get_submodule(module)
        weight = getattr(layer, f"lora_{kind.split('.')[0]}")["x"].weight
        assert torch.equal(weight.detach(), saved[key]), key
    assert not torch.allclose(sd3_output(pipe), base)


def test_the_evaluator_renders_base_and_lora_with_the_sd3_lora(trained: tuple[Path, list[float]],
                                                               model_cache: Path, tmp_path: Path) -> None:
    from lora_factory.profiles import load_config
    from tasks.evaluate.standalone import evaluate_file

    lora_dir, _ = trained
    cfg = load_config("tiny-sd3", {"home": str(model_cache.parent), "evaluate.num_seeds": 1,
                                   "evaluate.num_inference_steps": 2, "evaluate.resolution": 64}, environ={})
    assert cfg.models.base_family == "sd3"
    result = evaluate_file(lora_dir / LORA_WEIGHT_NAME, cfg, tmp_path / "ev")
    assert result.family == "sd3" and result.scheduler["class"] == "FlowMatchEulerDiscreteScheduler"
    ev = json.loads((tmp_path / "ev" / "eval.json").read_text())
    base = [s for s in ev["samples"] if s["side"] == "base"]
    assert base and len(base) == len([s for s in ev["samples"] if s["side"] == "lora"])
    images = tmp_path / "ev" / "images"
    first = base[0]["file"]
    a = np.asarray(Image.open(images / first), dtype=np.int16)
    b = np.asarray(Image.open(images / first.replace("base_", "lora_")), dtype=np.int16)
    assert a.shape == (64, 64, 3) and np.abs(a - b).max() > 0  # the LoRA changed the image


def test_the_tuner_has_sd3_rows_so_an_sd3_base_gets_past_the_tune_stage() -> None:
    from training.tuner import TuneRequest, TuneStats, recommend
    from training.tuner import family_for as tuner_family

    stats = TuneStats(num_images=40, caption_coverage=0.9, words_mean=12.0, tags_per_caption=1.0, text_diversity=0.6,
                      visual_diversity=0.35, short_side_median=2000.0, non_square_share=0.3, domain="photo")
    for base_ref, row_name in (("tiny:sd3", "tiny-sd3"), ("stabilityai/stable-diffusion-3.5-medium", "sd3")):
        row = tuner_family("sd3" if not base_ref.startswith("tiny:") else None, base_ref)
        assert row.name == row_name
        cfg = recommend(TuneRequest(stats, row)).config
        assert cfg.target_modules == list(family_for("sd3").default_targets) and cfg.snr_gamma is None
        assert cfg.noise_offset == 0.0
