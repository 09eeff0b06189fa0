"""The gate on a real effect: LoRAs trained on red and on blue images, scored against the red
concept's training images by the weight-free ``pixels`` embedding, then gated.

Why this setup (measured with a direct loop on tiny:sd, 100 steps, lr 1e-2, rank 4, mean RGB of
the sampled images; the red training colour is 0.82, 0.16, 0.16): the random tiny UNet predicting
epsilon never shows its data's colour (base 0.39, 0.56, 0.47; attention LoRA 0.38, 0.53, 0.51;
with the convolutions too 0.32, 0.53, 0.27), because a noise target's mean is zero whatever the
data: only a working denoiser maps the colour into its output. Under v-prediction the mean
velocity alone carries the data's colour, and a LoRA that also adapts the UNet's convolutions
(resnets, conv_in/out, time embedding projections) learns it in a few dozen steps (0.69, 0.30,
0.24; attention only: 0.55, 0.37, 0.37). So the base is tiny:sd with its scheduler switched to
v-prediction (a real diffusers setting, SD 2.x's), and the LoRA targets include the convolutions
(``train.target_modules``, LoCon-style).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from deploy.gate import gate
from lora_factory.config import EvaluateConfig, GateConfig, TrainConfig
from lora_factory.models import tiny_model_dir
from lora_factory.profiles import load_profile_data
from lora_factory.schemas import EvalResult
from tasks.evaluate import EvalSetup, evaluate_lora
from tasks.evaluate.prompts import EvalPrompt
from tasks.evaluate.stage import training_losses
from training.export_kohya import KOHYA_WEIGHT_NAME
from training.lora import LORA_WEIGHT_NAME
from training.trainer import train_lora

from .training_helpers import tiny_job

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(3600)]  # a bound for a hung run, not a speed test: whole runs take 5x longer on a loaded machine

RES = 64
TRIGGER = "lfstyle"
CAPTION = f"{TRIGGER}, a photo of a thing"
RED, BLUE = (210, 40, 40), (40, 40, 210)
# The family's attention targets plus the UNet's convolutions and time projections (LoCon-style).
TARGETS = ["to_k", "to_q", "to_v", "to_out.0", "proj_in", "proj_out", "conv1", "conv2", "conv_in",
           "conv_out", "time_emb_proj"]
PROMPTS = [EvalPrompt("concept", CAPTION), EvalPrompt("generalisation", f"{TRIGGER}, a thing on a beach"),
           EvalPrompt("leakage", "a photo of a thing")]


def write_colour_dataset(folder: Path, colour: tuple[int, int, int], n: int = 8) -> Path:
    """``n`` images dominated by ``colour``: a shaded background and three ellipses in other
    shades of it, laid out differently per image (so no generated image is a copy of one)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(sum(colour))
    base = np.asarray(colour, dtype=float)
    lines = []
    for i in range(n):
        im = Image.new("RGB", (RES, RES), tuple(int(v) for v in np.clip(base + rng.integers(-30, 30, 3), 0, 255)))
        draw = ImageDraw.Draw(im)
        for _ in range(3):
            x, y = (int(v) for v in rng.integers(0, RES - 16, 2))
            w, h = (int(v) for v in rng.integers(8, 32, 2))
            shade = np.clip(base * rng.uniform(0.5, 1.0) + rng.integers(0, 60, 3), 0, 255)
            draw.ellipse((x, y, x + w, y + h), fill=tuple(int(v) for v in shade))
        im.save(folder / f"{i:04d}.png")
        (folder / f"{i:04d}.txt").write_text(CAPTION)
        lines.append(json.dumps({"file_name": f"{i:04d}.png", "text": CAPTION, "item_id": f"{i:064x}"}))
    (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return folder


@pytest.fixture(scope="module")
def v_base(model_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny:sd with a v-prediction scheduler, as a local model folder."""
    folder = tmp_path_factory.mktemp("v-base") / "tiny-sd-v"
    shutil.copytree(tiny_model_dir("sd", model_cache), folder)
    config_file = folder / "scheduler" / "scheduler_config.json"
    config = json.loads(config_file.read_text())
    config_file.write_text(json.dumps({**config, "prediction_type": "v_prediction"}))
    return folder


def tiny_profile() -> dict:
    return load_profile_data("tiny")


def train_on(colour: tuple[int, int, int], v_base: Path, model_cache: Path, root: Path) -> Path:
    dataset = write_colour_dataset(root / "dataset", colour)
    train = TrainConfig(**{**tiny_profile()["train"], "learning_rate": 1e-2, "batch_size": 4, "max_steps": 60,
                           "target_modules": TARGETS, "checkpoint_every": 0})
    out = root / "lora"
    train_lora(tiny_job(dataset, train, out, model_cache, base_ref=str(v_base)))
    return out


@pytest.fixture(scope="module")
def red_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_colour_dataset(tmp_path_factory.mktemp("red-refs"), RED)


def evaluate_against_red(lora_dir: Path, red_dataset: Path, v_base: Path, model_cache: Path, out: Path) -> EvalResult:
    """The evaluate stage's scoring on the red concept: the tiny profile's settings, scored by the
    weight-free pixels embedding alone (the tiny CLIP and DINO are random)."""
    cfg = EvaluateConfig(**{**tiny_profile()["evaluate"], "embeddings": ["pixels"], "efficiency_images": 0,
                            "min_scores": {"fidelity_gain": 0.0}})
    # With the run's kohya file: a LoRA on the convolutions once lost its attention modules when
    # its diffusers file loaded (mixed key naming), so the two files rendered apart; both must load alike.
    setup = EvalSetup(str(v_base), "sd15", "tiny:clip", model_cache, RES, TRIGGER, sorted(red_dataset.glob("*.png")),
                      training_losses(lora_dir), lora_dir / KOHYA_WEIGHT_NAME)
    return evaluate_lora(lora_dir / LORA_WEIGHT_NAME, PROMPTS, cfg, setup, out)


@pytest.fixture(scope="module")
def results(v_base: Path, model_cache: Path, red_dataset: Path, tmp_path_factory: pytest.TempPathFactory
            ) -> dict[str, EvalResult]:
    out = {}
    for name, colour in (("red", RED), ("blue", BLUE)):
        root = tmp_path_factory.mktemp(name)
        lora = train_on(colour, v_base, model_cache, root)
        out[name] = evaluate_against_red(lora, red_dataset, v_base, model_cache, root / "eval")
    return out


def test_a_lora_reproduces_its_training_colour_and_scores_higher_fidelity(results: dict[str, EvalResult]) -> None:
    red, blue = results["red"].metrics["pixels_fidelity"], results["blue"].metrics["pixels_fidelity"]
    print(f"pixels fidelity vs red: base {red.base:.4f} red LoRA {red.lora:.4f} blue LoRA {blue.lora:.4f}")
    assert red.base == pytest.approx(blue.base)  # the same base images (same prompts, seeds, scheduler)
    assert red.lora > red.base + 0.05
    assert red.lora > blue.lora + 0.05
    assert blue.lora < blue.base


def test_the_gate_promotes_the_red_lora_and_rejects_the_blue_one(results: dict[str, EvalResult]) -> None:
    # adherence needs a text tower with weights: not measured by the pixels embedding, so not gated here.
    cfg = GateConfig(**{**tiny_profile().get("deploy", {}).get("gate", {}), "max_adherence_drop": None,
                        "require_portability": True})
    red, blue = gate(results["red"], cfg, None), gate(results["blue"], cfg, None)
    print(f"gate: red {red.promote} ({red.reason}); blue {blue.promote} ({blue.reason})")
    assert red.promote, red.reason
    assert not blue.promote
    assert any(r.startswith("fidelity_gain") for r in blue.reasons), blue.reasons


def test_both_files_of_a_lora_on_the_convolutions_load_alike(results: dict[str, EvalResult]) -> None:
    """Every module of the diffusers and the kohya file adapted after loading, same image."""
    for name, result in results.items():
        record = result.portability
        assert record["passed"], (name, record)
        assert len(record["files"]) == 2 and all(f["applied"] == f["modules"] > 0 for f in record["files"].values())
