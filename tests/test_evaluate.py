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
from training.export_kohya import KOHYA_WEIGHT_NAME
from training.lora import LORA_WEIGHT_NAME
from training.trainer import train_lora

from .training_helpers import tiny_job, write_dataset

RES = 64
PROMPTS = [EvalPrompt("concept", "lfstyle, a yellow ellipse"),
           EvalPrompt("generalisation", "a <b>bold</b> & long prompt about a yellow rectangle at dusk, lfstyle"),
           EvalPrompt("leakage", "a yellow ellipse")]
EVAL_CFG = EvaluateConfig(num_inference_steps=3, guidance_scale=5.0, seed=1234, num_seeds=2, batch_size=4,
                          efficiency_images=2, efficiency_prompts=1)


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
                     sorted(dataset.glob("*.png")), training_losses(lora_dir), lora_dir / KOHYA_WEIGHT_NAME,
                     scorer_refs={"dino": "tiny:dinov2"})


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
        for metric in ("clip_t", "clip_i", "dino", "pixels_fidelity"):
            assert math.isfinite(row[metric]) and -1.0 <= row[metric] <= 1.0
    assert set(on_disk["scores"]) == {"overall_score", "fidelity_gain", "adherence_delta", "diversity",
                                      "copy_risk", "leakage"}
    assert all(v is not None and math.isfinite(v) for v in on_disk["scores"].values())
    assert on_disk["scores"]["adherence_delta"] == pytest.approx(
        on_disk["metrics"]["clip_t"]["lora"] - on_disk["metrics"]["clip_t"]["base"])
    assert [t["score"] for t in on_disk["thresholds"]] == ["adherence_delta"]
    assert on_disk["weight_delta_rms"] > 0
    assert set(on_disk["fidelity_gains"]) == {"clip_i", "dino", "pixels_fidelity"}
    assert on_disk["fidelity_gains"]["dino"] == pytest.approx(on_disk["metrics"]["dino"]["lora"]
                                                              - on_disk["metrics"]["dino"]["base"])
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
    assert result.random_scorers == ["clip", "dino"]  # pixels needs no weights: its numbers mean something
    random = next(f for f in result.findings if f.code == "random_scorer")
    assert "carry no meaning" in random.message and "dino" in random.message and "tiny:dinov2" in random.items
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


def test_the_diffusers_and_kohya_files_load_alike(evaluated) -> None:
    result, _ = evaluated
    port = result.portability
    assert port["passed"] and set(port["files"]) == {LORA_WEIGHT_NAME, KOHYA_WEIGHT_NAME}
    assert all(f["ok"] and f["modules"] > 0 for f in port["files"].values())
    assert port["max_pixel_difference"] <= port["tolerance"]
    assert not any(f.code == "portability" for f in result.findings)


def test_portability_fails_on_a_file_with_a_missing_key(lora_dir: Path, model_cache: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    from lora_factory.models import load_pipeline
    from tasks.evaluate.portability import check_keys, portability_record

    tensors = load_file(str(lora_dir / KOHYA_WEIGHT_NAME))
    dropped = sorted(k for k in tensors if k.endswith(".lora_up.weight"))[0]
    del tensors[dropped]
    save_file(tensors, str(tmp_path / "broken.safetensors"))
    pipe = load_pipeline("tiny:sd", "sd15", model_cache)
    assert check_keys(pipe, "sd15", lora_dir / KOHYA_WEIGHT_NAME).ok
    report = check_keys(pipe, "sd15", tmp_path / "broken.safetensors")
    assert not report.ok and report.missing == [dropped.removesuffix(".lora_up.weight") + " lora_up"]
    assert "1 missing keys" in report.line()
    assert portability_record({"kohya": report}, None)["passed"] is False
    renamed = {k.replace("lora_unet_", "lora_unet_nowhere_"): v for k, v in tensors.items()}
    save_file(renamed, str(tmp_path / "elsewhere.safetensors"))
    assert check_keys(pipe, "sd15", tmp_path / "elsewhere.safetensors").unexpected


def _cli(*args: str) -> tuple[int, str]:
    from typer.testing import CliRunner

    from cli.app import app

    res = CliRunner().invoke(app, ["evaluate", *args])
    return res.exit_code, res.output


def test_the_standalone_command_evaluates_an_external_kohya_file(lora_dir: Path, dataset: Path,
                                                                  model_cache: Path, tmp_path: Path) -> None:
    import shutil

    external = tmp_path / "downloaded" / "my_lora.safetensors"
    external.parent.mkdir()
    shutil.copy(lora_dir / KOHYA_WEIGHT_NAME, external)  # alone: no training_args, no card
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# mine\nlfstyle, a yellow ellipse\nleakage: a yellow ellipse\n")
    code, out = _cli(str(external), "--base", "tiny:sd", "--prompts", str(prompts), "--references", str(dataset),
                     "--out", str(tmp_path / "ev"), "--home", str(model_cache.parent),
                     "--set", "evaluate.num_seeds=1", "--set", "evaluate.num_inference_steps=2",
                     "--set", "evaluate.resolution=64")
    assert code == 0, out
    assert "verdict:" in out and "random_scorer" in out and "pixels_fidelity" not in out
    ev = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert [p["kind"] for p in ev["prompts"]] == ["concept", "leakage"]
    assert ev["family"] == "sd15"  # read from the base's model_index.json: no --family needed
    assert ev["scores"]["fidelity_gain"] is not None and ev["scores"]["leakage"] is not None


def test_standalone_bad_input_is_one_line(lora_dir: Path, model_cache: Path, tmp_path: Path) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    home = ("--home", str(model_cache.parent), "--set", "evaluate.resolution=64")
    text = tmp_path / "notes.safetensors"
    text.write_text("not a tensor file")
    save_file({"weight": torch.zeros(3, 3)}, str(tmp_path / "model.safetensors"))
    squeezed = {k: (v[:, :-1].contiguous() if k.endswith("lora_down.weight") else v)
                for k, v in load_file(str(lora_dir / KOHYA_WEIGHT_NAME)).items()}
    save_file(squeezed, str(tmp_path / "other_base.safetensors"))
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing here\n\n")
    kandinsky = tmp_path / "kandinsky"
    kandinsky.mkdir()
    (kandinsky / "model_index.json").write_text('{"_class_name": "KandinskyPipeline"}')
    cases = [
        ((str(text), "--base", "tiny:sd"), "is not a LoRA: not a readable safetensors file"),
        ((str(tmp_path / "model.safetensors"), "--base", "tiny:sd"), "no LoRA weights"),
        ((str(tmp_path / "other_base.safetensors"), "--base", "tiny:sd"), "shape mismatches"),
        ((str(lora_dir / KOHYA_WEIGHT_NAME), "--base", "tiny:sd", "--prompts", str(empty)), "has no prompts"),
        ((str(lora_dir / KOHYA_WEIGHT_NAME), "--base", str(kandinsky)), "which no model family trains"),
    ]
    for args, expected in cases:
        code, out = _cli(*args, *home, "--out", str(tmp_path / "out"))
        errors = [line for line in out.splitlines() if line.startswith("error:")]  # (and progress bars)
        assert code != 0 and len(errors) == 1 and expected in errors[0] and "Traceback" not in out, out
    assert not (tmp_path / "out").exists()


def test_efficiency_is_measured_without_loaded_and_fused(evaluated) -> None:
    result, out = evaluated
    eff = json.loads((out / "eval.json").read_text())["efficiency"]
    assert set(eff["modes"]) == {"base", "lora", "fused"}
    assert eff["memory_kind"] == "rss_peak_delta" and eff["device"] == "cpu"
    assert eff["prompts"] == [p.text for p in PROMPTS[:EVAL_CFG.efficiency_prompts]]
    for rec in eff["modes"].values():
        assert rec["images"] == len(rec["seconds"]) == EVAL_CFG.efficiency_images
        assert 0 < rec["p50"] <= rec["p95"] <= rec["p99"] and rec["peak_memory_mib"] >= 0
    page = (out / "report.html").read_text(encoding="utf-8")
    assert "LoRA fused" in page and "resident-set peak" in page
    assert "Deploy has not run yet" in page  # the decision section deploy fills in
