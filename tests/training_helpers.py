"""Shared helpers of the training tests (and bench/train.py): a drawn dataset folder, a small
training config, a job on the tiny models and the saved adapter's tensors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageDraw
from safetensors.torch import load_file

from lora_factory.config import TrainConfig
from training.job import TrainJob
from training.lora import LORA_WEIGHT_NAME

RES = 64
SHAPES = ("ellipse", "rectangle", "ellipse", "rectangle")


def draw_image(i: int, size: tuple[int, int]) -> Image.Image:
    """A flat background with one coloured shape: distinct per ``i``, no randomness."""
    w, h = size
    im = Image.new("RGB", size, ((20 + 50 * i) % 251, 90, (200 - 40 * i) % 251))
    box = (w // 6 + 3 * i, h // 5, w // 2 + 6 * i, h // 2 + 4 * i)
    getattr(ImageDraw.Draw(im), SHAPES[i % len(SHAPES)])(box, fill=(250, (220 - 30 * i) % 251, (40 * i) % 251))
    return im


def write_dataset(folder: Path, sizes: list[tuple[int, int]]) -> Path:
    """A label-stage style folder: images, ``.txt`` sidecars and ``metadata.jsonl``."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, size in enumerate(sizes):
        name = f"{i:04d}.png"
        caption = f"lfstyle, a yellow {SHAPES[i % len(SHAPES)]} on a plain background"
        draw_image(i, size).save(folder / name)
        (folder / f"{i:04d}.txt").write_text(caption)
        lines.append(json.dumps({"file_name": name, "text": caption, "item_id": f"{i:064x}"}))
    (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def small_cfg(**overrides: object) -> TrainConfig:
    base: dict[str, object] = {"resolution": RES, "rank": 4, "learning_rate": 1e-2, "batch_size": 4,
                               "max_steps": 30, "device": "cpu"}
    return TrainConfig(**{**base, **overrides})


def tiny_job(dataset_dir: Path, train: TrainConfig, out_dir: Path, cache_dir: Path, *, seed: int = 0,
             base_ref: str = "tiny:sd", family: str = "sd15", **extra: Any) -> TrainJob:
    """A job on a tiny model (SD1.5 layout unless told); ``extra`` sets the job's optional fields."""
    return TrainJob(base_ref=base_ref, family=family, dataset_dir=dataset_dir, train=train, out_dir=out_dir,
                    cache_dir=cache_dir, seed=seed, **extra)


def lora_tensors(lora_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(lora_dir / LORA_WEIGHT_NAME))
