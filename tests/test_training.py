"""The training dataset and the LoRA trainer on the tiny SD1.5/SDXL pipelines (CPU, seconds)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lora_factory.errors import StageError
from tests.training_helpers import RES, draw_image, lora_tensors, small_cfg, tiny_job, write_dataset
from training.dataset import CaptionedImageDataset, collate, read_records
from training.job import TrainResult
from training.lora import LORA_WEIGHT_NAME
from training.save import TRAINING_ARGS_NAME
from training.trainer import train_lora


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("dataset"), [(80, 64), (64, 96), (128, 128), (96, 72)])


@pytest.fixture(scope="module")
def trained(dataset_dir: Path, model_cache: Path, tmp_path_factory: pytest.TempPathFactory
            ) -> tuple[TrainResult, list[tuple[int, dict[str, float]]]]:
    calls: list[tuple[int, dict[str, float]]] = []
    job = tiny_job(dataset_dir, small_cfg(), tmp_path_factory.mktemp("lora"), model_cache)
    result = train_lora(job, on_step=lambda step, m: calls.append((step, m)))
    return result, calls


# Dataset ----------------------------------------------------------------------------------------

def test_dataset_gives_normalised_square_crops_with_captions(dataset_dir: Path) -> None:
    ds = CaptionedImageDataset(dataset_dir, RES)
    assert len(ds) == 4 and ds.upscaled == 0
    item = ds[1]
    assert item["pixel_values"].shape == (3, RES, RES)
    assert item["pixel_values"].dtype == torch.float32
    assert float(item["pixel_values"].min()) >= -1.0 and float(item["pixel_values"].max()) <= 1.0
    assert item["caption"] == (dataset_dir / "0001.txt").read_text()
    assert item["original_size"] == (96, 64)  # (h, w)
    assert item["crop_top_left"] == (16, 0)  # 64x96 is already 64 wide: crop 16 px off the top
    batch = collate([ds[0], ds[1]])
    assert batch["pixel_values"].shape == (2, 3, RES, RES)
    assert batch["original_sizes"].tolist() == [[64, 80], [96, 64]]


def test_dataset_turns_exif_rotated_images_upright_and_upscales_small_ones(tmp_path: Path) -> None:
    # Stored pixels: red left half, blue right half; EXIF orientation 6 means "rotate 90° CW to
    # display", which puts red on top.
    im = Image.new("RGB", (40, 20), (0, 0, 255))
    im.paste((255, 0, 0), (0, 0, 20, 20))
    exif = Image.Exif()
    exif[0x0112] = 6
    im.save(tmp_path / "phone.jpg", exif=exif, quality=95)
    (tmp_path / "metadata.jsonl").write_text(json.dumps({"file_name": "phone.jpg", "text": "x"}) + "\n")

    ds = CaptionedImageDataset(tmp_path, 32)
    assert ds.upscaled == 1  # shorter side 20 < 32: upscaled, not dropped
    item = ds[0]
    assert item["original_size"] == (40, 20)  # upright: taller than wide
    pixels = item["pixel_values"]
    assert pixels.shape == (3, 32, 32)
    top, bottom = pixels[:, 2, 16], pixels[:, -3, 16]
    assert top[0] > 0.5 and top[2] < -0.5  # red
    assert bottom[2] > 0.5 and bottom[0] < -0.5  # blue


def test_folder_without_metadata_is_read_from_sidecars(tmp_path: Path) -> None:
    draw_image(0, (64, 64)).save(tmp_path / "b.png")
    draw_image(1, (64, 64)).save(tmp_path / "a.png")
    (tmp_path / "a.txt").write_text("lfstyle a")
    records = read_records(tmp_path)
    assert [(r.path.name, r.caption) for r in records] == [("a.png", "lfstyle a"), ("b.png", "")]


def test_empty_folder_is_a_one_line_stage_error(tmp_path: Path) -> None:
    (tmp_path / "metadata.jsonl").write_text("")
    with pytest.raises(StageError, match="no images") as info:
        CaptionedImageDataset(tmp_path, RES)
    assert "\n" not in str(info.value)


def test_metadata_naming_a_missing_image_is_a_stage_error(tmp_path: Path) -> None:
    (tmp_path / "metadata.jsonl").write_text(json.dumps({"file_name": "gone.png", "text": "x"}) + "\n")
    with pytest.raises(StageError, match="gone.png"):
        read_records(tmp_path)


def test_an_unreadable_image_is_a_stage_error_naming_it(tmp_path: Path) -> None:
    (tmp_path / "broken.png").write_bytes(b"not a png")
    (tmp_path / "metadata.jsonl").write_text(json.dumps({"file_name": "broken.png", "text": "x"}) + "\n")
    with pytest.raises(StageError, match="broken.png"):
        CaptionedImageDataset(tmp_path, RES)


# Trainer ----------------------------------------------------------------------------------------

def test_training_lowers_the_loss_and_reports_every_step(trained) -> None:
    result, calls = trained
    assert result.steps == 30 and len(result.losses) == 30
    assert result.final_loss == result.losses[-1]
    assert np.mean(result.losses[-5:]) < np.mean(result.losses[:5]) - 0.05
    assert [step for step, _ in calls] == list(range(1, 31))
    for _, metrics in calls:
        assert set(metrics) == {"loss", "loss_smoothed", "lr", "grad_norm", "lora_norm", "step_time",
                                "samples_per_s", "peak_memory_mb", "skipped"}
        assert metrics["skipped"] == 0.0 and metrics["lora_norm"] > 0
        assert all(math.isfinite(v) for v in metrics.values())
    assert calls[0][1]["lr"] == pytest.approx(1e-2)


def test_overfitting_eight_images_lowers_the_loss(model_cache: Path, tmp_path: Path) -> None:
    sizes = [(64, 64), (80, 64), (64, 80), (96, 96), (72, 64), (64, 72), (128, 96), (96, 128)]
    dataset = write_dataset(tmp_path / "eight", sizes)
    cfg = small_cfg(max_steps=40, batch_size=4, learning_rate=1e-2)
    result = train_lora(tiny_job(dataset, cfg, tmp_path / "o", model_cache))
    assert np.mean(result.losses[-8:]) < np.mean(result.losses[:8]) - 0.05


def test_training_saves_a_diffusers_lora_and_its_arguments(trained) -> None:
    result, _ = trained
    tensors = lora_tensors(result.lora_dir)
    assert tensors
    for key, value in tensors.items():
        assert key.startswith("unet."), key
        assert any(part in key for part in ("lora.down", "lora.up", "lora_A", "lora_B")), key
        assert value.dtype == torch.float32
    assert any("lora.up" in k or "lora_B" in k for k in tensors)
    # lora_B / lora.up starts at zero; training must have moved it.
    assert any(float(v.abs().max()) > 0 for k, v in tensors.items() if "up" in k or "lora_B" in k)
    args = json.loads((result.lora_dir / TRAINING_ARGS_NAME).read_text())
    assert args["steps"] == 30 and args["seed"] == 0 and args["family"] == "sd15"
    assert args["train"]["rank"] == 4


def test_the_saved_lora_loads_into_the_pipeline_and_changes_the_unet(trained, model_cache: Path) -> None:
    from lora_factory.models import load_pipeline

    result, _ = trained
    pipe = load_pipeline("tiny:sd", "sd15", model_cache)
    gen = torch.Generator().manual_seed(0)
    latents = torch.randn(1, 4, 8, 8, generator=gen)
    ids = pipe.tokenizer(["lfstyle, a yellow ellipse"], padding="max_length", return_tensors="pt").input_ids
    with torch.no_grad():
        cond = pipe.text_encoder(ids)[0]
        before = pipe.unet(latents, torch.tensor([500]), cond).sample
        pipe.load_lora_weights(str(result.lora_dir))
        after = pipe.unet(latents, torch.tensor([500]), cond).sample
    assert not torch.allclose(before, after)
    # alpha == rank: every adapted layer runs at scale 1.
    scales = {s for m in pipe.unet.modules() for s in getattr(m, "scaling", {}).values()}
    assert scales == {1.0}


def test_same_seed_gives_identical_weights(dataset_dir: Path, model_cache: Path, tmp_path: Path) -> None:
    # Gradient accumulation, a warmup + cosine schedule and sparse logging ride along.
    cfg = small_cfg(batch_size=2, max_steps=4, gradient_accumulation_steps=2,
                    lr_scheduler="cosine", lr_warmup_steps=1, log_every=2)
    runs = []
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        steps: list[int] = []
        train_lora(tiny_job(dataset_dir, cfg, tmp_path / name, model_cache, seed=seed),
                   on_step=lambda step, _m, steps=steps: steps.append(step))
        assert steps == [2, 4]
        runs.append(lora_tensors(tmp_path / name))
    a, b, c = runs
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_alpha_is_kept_in_the_saved_file(dataset_dir: Path, model_cache: Path, tmp_path: Path) -> None:
    """Without the PEFT config in the file, diffusers would load alpha == rank (scale 1)."""
    from lora_factory.models import load_pipeline

    train_lora(tiny_job(dataset_dir, small_cfg(max_steps=1, rank=4, alpha=8.0), tmp_path, model_cache))
    pipe = load_pipeline("tiny:sd", "sd15", model_cache)
    pipe.load_lora_weights(str(tmp_path))
    scales = {s for m in pipe.unet.modules() for s in getattr(m, "scaling", {}).values()}
    assert scales == {2.0}


def test_a_diverging_loss_stops_with_a_stage_error_naming_the_step(
    dataset_dir: Path, model_cache: Path, tmp_path: Path
) -> None:
    with pytest.raises(StageError, match=r"diverged at step \d+") as info:
        train_lora(tiny_job(dataset_dir, small_cfg(learning_rate=1e30, max_steps=5),
                            tmp_path / "lora", model_cache))
    assert "\n" not in str(info.value)
    assert not (tmp_path / "lora" / LORA_WEIGHT_NAME).exists()


def test_sdxl_lora_trains_saves_and_loads(dataset_dir: Path, model_cache: Path, tmp_path: Path) -> None:
    from lora_factory.models import load_pipeline

    result = train_lora(tiny_job(dataset_dir, small_cfg(max_steps=3, learning_rate=3e-2), tmp_path,
                                 model_cache, base_ref="tiny:sdxl", family="sdxl"))
    assert result.steps == 3 and all(math.isfinite(v) for v in result.losses)
    assert all(k.startswith("unet.") for k in lora_tensors(tmp_path))

    pipe = load_pipeline("tiny:sdxl", "sdxl", model_cache)
    gen = torch.Generator().manual_seed(0)
    latents = torch.randn(1, 4, 8, 8, generator=gen)
    embeds, _, pooled, _ = pipe.encode_prompt("lfstyle", do_classifier_free_guidance=False)
    added = {"text_embeds": pooled, "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]])}
    with torch.no_grad():
        before = pipe.unet(latents, torch.tensor([500]), embeds, added_cond_kwargs=added).sample
        pipe.load_lora_weights(str(tmp_path))
        after = pipe.unet(latents, torch.tensor([500]), embeds, added_cond_kwargs=added).sample
    assert not torch.allclose(before, after)


def test_unknown_family_and_missing_cuda_are_stage_errors(dataset_dir: Path, model_cache: Path,
                                                          tmp_path: Path) -> None:
    with pytest.raises(StageError, match="family"):
        train_lora(tiny_job(dataset_dir, small_cfg(), tmp_path, model_cache, family="sd3"))
    if not torch.cuda.is_available():
        with pytest.raises(StageError, match="CUDA"):
            train_lora(tiny_job(dataset_dir, small_cfg(device="cuda"), tmp_path, model_cache))


def test_target_modules_that_match_nothing_are_a_stage_error(dataset_dir: Path, model_cache: Path,
                                                              tmp_path: Path) -> None:
    with pytest.raises(StageError, match="target_modules") as info:
        train_lora(tiny_job(dataset_dir, small_cfg(target_modules=["no_such_layer"]), tmp_path, model_cache))
    assert "\n" not in str(info.value)


def test_bf16_mixed_precision_trains_on_cpu_and_saves_fp32(dataset_dir: Path, model_cache: Path,
                                                           tmp_path: Path) -> None:
    result = train_lora(tiny_job(dataset_dir, small_cfg(max_steps=2, mixed_precision="bf16"),
                                 tmp_path, model_cache))
    assert all(math.isfinite(v) for v in result.losses)
    assert {t.dtype for t in lora_tensors(tmp_path).values()} == {torch.float32}


def test_costly_metrics_are_computed_only_on_logging_steps(dataset_dir: Path, model_cache: Path,
                                                           tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import training.trainer as trainer

    real, norms = trainer.weights_norm, []

    def counted(params: list[torch.nn.Parameter]) -> float:
        norms.append(real(params))
        return norms[-1]

    monkeypatch.setattr(trainer, "weights_norm", counted)
    logged: list[tuple[int, float]] = []
    train_lora(tiny_job(dataset_dir, small_cfg(max_steps=6, batch_size=2, log_every=3), tmp_path, model_cache),
               on_step=lambda step, m: logged.append((step, m["lora_norm"])))
    assert [step for step, _ in logged] == [3, 6]
    assert [norm for _, norm in logged] == norms and all(n > 0 for n in norms)
