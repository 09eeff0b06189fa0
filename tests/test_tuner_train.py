"""The tuner's configs are ones the trainer accepts and runs: SD1.5-, SDXL- and tiny-shaped
recommendations, each trained for two steps on the tiny model of its architecture (CPU)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from lora_factory.config import TrainConfig
from lora_factory.profiles import load_config
from tests.training_helpers import tiny_job
from training.trainer import train_lora
from training.tuner import TuneRequest, TuneStats, family_for, family_row, recommend, request_for

SIZES = [(80, 64), (64, 96), (128, 128), (96, 72), (112, 80)]
STATS = TuneStats(num_images=len(SIZES), caption_coverage=1.0, words_mean=6.0, text_diversity=0.5,
                  visual_diversity=0.3, short_side_median=72.0, non_square_share=0.8, domain="photo")


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A label-stage style folder: images, .txt captions and metadata.jsonl."""
    folder = tmp_path_factory.mktemp("tuner-dataset")
    lines = []
    for i, size in enumerate(SIZES):
        im = Image.new("RGB", size, ((30 + 60 * i) % 251, 120, (220 - 40 * i) % 251))
        ImageDraw.Draw(im).ellipse((size[0] // 5, size[1] // 5, size[0] // 2 + 5 * i, size[1] // 2 + 3 * i),
                                   fill=(240, (200 - 30 * i) % 251, 40))
        im.save(folder / f"{i:03d}.png")
        caption = f"lfstyle, a yellow disc number {i} on a plain background"
        (folder / f"{i:03d}.txt").write_text(caption)
        lines.append(json.dumps({"file_name": f"{i:03d}.png", "text": caption, "item_id": f"{i:064x}"}))
    (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def two_steps() -> tuple[TrainConfig, frozenset[str]]:
    """What `--set train.device=cpu --set train.max_steps=2` pins."""
    return TrainConfig(device="cpu", max_steps=2), frozenset({"device", "max_steps"})


@pytest.mark.parametrize(("family", "base_ref", "gpu_gb"), [("sd15", "tiny:sd", None), ("sdxl", "tiny:sdxl", 16.0)])
def test_gpu_family_configs_train(family: str, base_ref: str, gpu_gb: float | None, dataset_dir: Path,
                                  model_cache: Path, tmp_path: Path) -> None:
    base, pinned = two_steps()
    rec = recommend(TuneRequest(STATS, family_row(family), base=base, pinned=pinned, gpu_gb=gpu_gb))
    cfg = rec.config
    assert cfg.rank == rec.choices["rank"].value and cfg.bucket_step == 64 and cfg.snr_gamma == 5.0
    if gpu_gb is not None:  # SDXL in fp32 (a pinned CPU) needs checkpointing to fit 16 GiB
        assert cfg.gradient_checkpointing and rec.memory.gib() <= gpu_gb
    result = train_lora(tiny_job(dataset_dir, cfg, tmp_path / "lora", model_cache, base_ref=base_ref, family=family))
    assert result.steps == 2 and all(math.isfinite(x) for x in result.losses)
    assert (tmp_path / "lora" / "pytorch_lora_weights.safetensors").is_file()


def test_the_tiny_profile_config_trains(dataset_dir: Path, model_cache: Path, tmp_path: Path) -> None:
    cfg = load_config("tiny", {"train.max_steps": 2}, environ={})
    row = family_for(cfg.models.base_family, cfg.models.base)
    rec = recommend(request_for(cfg, STATS, row))
    assert row.name == "tiny-sd15" and rec.config.resolution == 64 and rec.config.max_steps == 2
    result = train_lora(tiny_job(dataset_dir, rec.config, tmp_path / "lora", model_cache,
                                 base_ref=cfg.models.base, family=cfg.models.base_family))
    assert result.steps == 2 and len(result.losses) == 2
