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


def adapted_pipe(ref: str, family: str, targets: list[str], alpha: float, cache_dir: Path) -> Any:
    """The tiny pipeline ``ref`` with a rank-4 LoRA whose up weights are random (a trained
    LoRA's stand-in, so exports and loaders have something to carry)."""
    from lora_factory.models import load_pipeline
    from training.families import family_for
    from training.lora import add_loras

    pipe = load_pipeline(ref, None, cache_dir)
    add_loras(pipe, TrainConfig(rank=4, alpha=alpha, target_modules=targets, device="cpu"), seed=0,
              family=family_for(family))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        for name, p in pipe.transformer.named_parameters():
            if "lora_B" in name:
                p.data.normal_(0, 0.2)
    return pipe


def sd3_output(pipe: Any) -> torch.Tensor:
    """tiny:sd3's transformer on fixed random inputs (64 px latents, 12 text tokens)."""
    g = torch.Generator().manual_seed(0)
    inputs = {"hidden_states": torch.randn(1, 16, 8, 8, generator=g),
              "encoder_hidden_states": torch.randn(1, 12, 64, generator=g),
              "pooled_projections": torch.randn(1, 64, generator=g), "timestep": torch.tensor([600.0])}
    with torch.no_grad():
        return pipe.transformer(**inputs, return_dict=False)[0]


def assert_key_check_flags_a_squeezed_layer(base: Any, family: str, folder: Path, key: str, tmp_path: Path) -> None:
    """The evaluator's key check passes both export files of ``folder`` and names the fused
    layer ``key`` once its up weight loses a row."""
    from safetensors.torch import save_file

    from tasks.evaluate.portability import check_keys
    from training.export_kohya import KOHYA_WEIGHT_NAME

    for name in (LORA_WEIGHT_NAME, KOHYA_WEIGHT_NAME):
        report = check_keys(base, family, folder / name)
        assert report.ok, (name, report.line())
    kohya = load_file(str(folder / KOHYA_WEIGHT_NAME))
    kohya[f"{key}.lora_up.weight"] = kohya[f"{key}.lora_up.weight"][:-1].contiguous()
    save_file(kohya, str(tmp_path / "squeezed.safetensors"))
    report = check_keys(base, family, tmp_path / "squeezed.safetensors")
    assert report.shapes and report.shapes[0].startswith(key), report.shapes
