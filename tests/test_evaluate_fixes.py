"""Evaluate's smaller defects: LoCon conv keys pass the portability check, a fuse_lora that fails
leaves the fused figures unavailable with the reason, eval.json's paths are relative to the run
directory, and an aesthetic head scores the embeddings of the CLIP it was trained on."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from lora_factory.config import EvaluateConfig
from lora_factory.errors import ConfigError
from tasks.evaluate.aesthetic import add_aesthetic
from tasks.evaluate.efficiency import efficiency_metrics, measure_base, measure_loaded
from tasks.evaluate.portability import check_keys
from tasks.evaluate.prompts import EvalPrompt
from tasks.evaluate.report_sections import efficiency_section, progression_section
from tasks.evaluate.score import EmbeddingSet, Scored
from tasks.evaluate.stage import EvalSetup, run_relative
from training.export_kohya import KOHYA_WEIGHT_NAME
from training.lora import LORA_WEIGHT_NAME


@pytest.fixture(scope="module")
def pipe(model_cache: Path):  # noqa: ANN201
    from lora_factory.models import load_pipeline

    p = load_pipeline("tiny:sd", "sd15", model_cache, device="cpu")
    p.set_progress_bar_config(disable=True)
    return p


def _conv3x3(pipe) -> tuple[str, torch.nn.Conv2d]:  # noqa: ANN001
    return next((n, m) for n, m in pipe.unet.named_modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3))


def _with_locon(kohya: Path, out: Path, name: str, down: torch.Tensor, up: torch.Tensor) -> Path:
    """The kohya file plus one LoCon conv module (kohya's LyCORIS-style conv keys)."""
    tensors = load_file(str(kohya))
    key = "lora_unet_" + name.replace(".", "_")
    tensors |= {f"{key}.lora_down.weight": down, f"{key}.lora_up.weight": up, f"{key}.alpha": torch.tensor(4.0)}
    save_file(tensors, str(out))
    return out


def test_conv_lora_of_the_layers_kernel_fits_and_another_kernel_does_not(pipe, tiny_lora: Path, tmp_path: Path) -> None:
    name, conv = _conv3x3(pipe)
    out_ch, in_ch = conv.weight.shape[:2]
    good = _with_locon(tiny_lora / KOHYA_WEIGHT_NAME, tmp_path / "locon.safetensors", name,
                       torch.zeros(4, in_ch, 3, 3), torch.zeros(out_ch, 4, 1, 1))
    report = check_keys(pipe, "sd15", good)
    assert report.ok, report.line()
    assert report.modules == check_keys(pipe, "sd15", tiny_lora / KOHYA_WEIGHT_NAME).modules + 1
    wrong = _with_locon(tiny_lora / KOHYA_WEIGHT_NAME, tmp_path / "wrong.safetensors", name,
                        torch.zeros(4, in_ch, 1, 1), torch.zeros(out_ch, 4, 1, 1))
    bad = check_keys(pipe, "sd15", wrong)
    assert not bad.ok and bad.shapes == [f"lora_unet_{name.replace('.', '_')} down (4, {in_ch}, 1, 1) up ({out_ch}, 4, 1, 1)"]


def test_a_failing_fuse_leaves_the_fused_figures_unavailable_with_the_reason(pipe, tiny_lora: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """fuse_lora fails for real on some setups (quantized bases, adapters diffusers cannot fuse);
    the tiny pipeline fuses fine, so its fuse_lora is replaced by one that raises like they do."""
    kw = {"steps": 2, "guidance": 1.0, "resolution": 32, "batch_size": 1, "device": torch.device("cpu")}
    prompts = [EvalPrompt("concept", "lfstyle, a yellow ellipse")]
    base = measure_base(pipe, prompts, 1, 1, kw)
    pipe.load_lora_weights(str(tiny_lora), weight_name=LORA_WEIGHT_NAME)
    try:
        def fail(**_: object) -> None:
            raise ValueError("cannot fuse into a quantized layer\nsecond line of detail")
        monkeypatch.setattr(pipe, "fuse_lora", fail)
        eff = measure_loaded(pipe, prompts, 1, 1, kw, base=base)
    finally:
        pipe.unload_lora_weights()
    assert eff["modes"]["fused"] == {"unavailable": "fuse_lora failed: ValueError: cannot fuse into a quantized layer"}
    assert eff["modes"]["lora"]["images"] == 1
    flat = efficiency_metrics(eff)
    assert "latency_p50_s_lora" in flat and not any(k.endswith("_fused") for k in flat)
    assert "unavailable: fuse_lora failed: ValueError" in efficiency_section({"efficiency": eff})


def test_eval_json_paths_are_relative_to_the_run_and_the_report_resolves_them(tmp_path: Path) -> None:
    run = tmp_path / "run"
    grid = run / "train" / "samples" / "step-000010.png"
    grid.parent.mkdir(parents=True)
    Image.new("RGB", (8, 8), (200, 10, 10)).save(grid)
    staging = run / ".staging" / "evaluate-1234"
    setup = EvalSetup("tiny:sd", "sd15", "tiny:clip", tmp_path, 32, "lfstyle", run_dir=run)
    assert run_relative(grid, setup, staging) == "train/samples/step-000010.png"
    assert run_relative(staging / "lora" / "x.safetensors", setup, staging) == "evaluate/lora/x.safetensors"
    outside = tmp_path / "elsewhere.png"
    assert run_relative(outside, setup, staging) == str(outside)
    assert run_relative(grid, EvalSetup("tiny:sd", "sd15", "tiny:clip", tmp_path, 32, "t"), staging) == str(grid)
    page = progression_section({"sample_progression": ["train/samples/step-000010.png"]}, run)
    assert "alt='step-000010' src='data:image/png;base64," in page
    # The worst copies' training images are run-relative too.
    from tasks.evaluate.report import _copies

    train_image = run / "label" / "dataset" / "a.png"
    train_image.parent.mkdir(parents=True)
    Image.new("RGB", (8, 8), (10, 200, 10)).save(train_image)
    assert run_relative(train_image, setup, staging) == "label/dataset/a.png"
    copies = _copies({"worst_copies": [{"image": "step-000010.png", "training_image": "label/dataset/a.png",
                                         "similarity": 0.5, "prompt": "p"}]}, grid.parent, run)
    assert copies.count("src='data:image/") == 2


def _images(n: int) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)) for _ in range(n)]


def test_the_aesthetic_head_scores_the_embeddings_of_its_own_clip(model_cache: Path, tmp_path: Path) -> None:
    """evaluate.aesthetic_clip names the head's CLIP: scored without a clip embedding set, and a
    head of another width is one line naming that setting."""
    from tasks.evaluate.embedders import load_embedder

    dim = load_embedder("clip", "tiny:clip", model_cache).embed_images(_images(1)).shape[1]
    pixels = np.eye(3, 8)
    sets = [EmbeddingSet("pixels", pixels, pixels, np.zeros((0, 8)))]
    scored = Scored()
    cfg = EvaluateConfig(aesthetic_head="tiny:aesthetic", aesthetic_clip="tiny:clip", embeddings=["pixels"])
    used = add_aesthetic(scored, sets, cfg, (_images(3), _images(3)[::-1]), model_cache)
    assert used == {"aesthetic": "tiny:aesthetic", "aesthetic_clip": "tiny:clip"}
    assert len(scored.per_sample["aesthetic"]["base"]) == 3
    torch.save({"layers.0.weight": torch.zeros(1, dim + 256), "layers.0.bias": torch.zeros(1)}, tmp_path / "h.pth")
    wide = EvaluateConfig(aesthetic_head=str(tmp_path / "h.pth"), aesthetic_clip="tiny:clip", embeddings=["pixels"])
    with pytest.raises(ConfigError, match=f"evaluate.aesthetic_clip gives {dim}-dim") as info:
        add_aesthetic(Scored(), sets, wide, (_images(1), _images(1)), model_cache)
    assert "\n" not in str(info.value) and "ViT-L/14" in str(info.value)


def test_the_report_shows_each_files_adapted_modules_and_a_dropped_part() -> None:
    from tasks.evaluate.portability import KeyReport, portability_record
    from tasks.evaluate.report_sections import portability_section

    whole = KeyReport(modules=56, applied=56)
    mixed = KeyReport(modules=56, ignored=[f"unet.block.{i}.attn.to_q" for i in range(32)], applied=24)
    page = portability_section({"portability": portability_record(
        {"pytorch_lora_weights.safetensors": mixed, "kohya.safetensors": whole}, 0.19)})
    assert "Portability: failed" in page
    assert "24 of 56" in page and "56 of 56" in page
    assert "32 modules diffusers&#x27; loader ignores" in page and "first: unet.block.0.attn.to_q" in page
    assert "difference between the files' images (same prompt and seed): 0.19 " in page
    fine = portability_section({"portability": portability_record({"kohya.safetensors": whole}, None)})
    assert "Portability: passed" in fine and "not portable" not in fine and "were not compared" in fine
    assert portability_section({}) == "<p>Not checked.</p>"
