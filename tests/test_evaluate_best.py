"""Best checkpoint end to end on the tiny model: the train stage publishes its last K
checkpoints, evaluate scores them and the final LoRA and picks the planted better one, and deploy
registers and exports that checkpoint in both formats (compared by file digest)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from lora_factory.catalog import (
    EVAL_LORA,
    EVAL_REPORT,
    EVAL_RESULT,
    LABEL_CAPTION_STATS,
    LABEL_DATASET,
    LABEL_LABELS,
    TRAIN_CHECKPOINTS,
    TRAIN_LORA,
    TUNE_TRAIN_CONFIG,
)
from lora_factory.profiles import load_config
from lora_factory.runstore import DONE
from lora_factory.schemas import CaptionStats
from tasks.evaluate.best import FINAL, short_prompts
from tasks.evaluate.checkpoints import as_lora_file
from tasks.evaluate.generate import render
from tasks.evaluate.prompts import seeds_for
from tasks.evaluate.report_sections import best_checkpoint_section
from training.checkpoints import STATE, WEIGHTS, publish_weights
from training.export_kohya import KOHYA_WEIGHT_NAME
from training.lora import LORA_WEIGHT_NAME

from .training_helpers import small_cfg, write_dataset

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(3600)]  # a bound for a hung run, not a speed test: whole runs take 5x longer on a loaded machine
RES = 32


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _values(path: Path) -> list[tuple[tuple[int, ...], bytes]]:
    """The LoRA matrices of a file by value (names and alpha scalars left out), sorted."""
    return sorted((tuple(v.shape), v.float().numpy().tobytes()) for k, v in load_file(str(path)).items()
                  if not k.endswith(".alpha"))


def _zero_up(path: Path) -> None:
    """Plant a worse LoRA: its up (B) matrices zeroed, so it renders the base model's images."""
    weights = load_file(str(path))
    save_file({k: torch.zeros_like(v) if ("lora_B" in k or ".up." in k) else v for k, v in weights.items()}, str(path))


def _reference_images(cfg, run, label: Path, model_cache: Path, tmp: Path) -> None:  # noqa: ANN001
    """The label dataset's images become step 2's renders of the short prompt set (the images
    the checkpoint scores are compared with), so step 2 is the planted better checkpoint."""
    from lora_factory.models import load_pipeline
    from tasks.evaluate.task import run_prompts

    stats = LABEL_CAPTION_STATS.read(label)
    prompts = short_prompts(run_prompts(cfg, stats, ["lighthouse"], []), cfg.evaluate.best_of_prompts)
    as_lora_file(TRAIN_CHECKPOINTS.at(run.stage_path("train")) / "step-000002",
                         TRAIN_LORA.at(run.stage_path("train")) / LORA_WEIGHT_NAME, tmp / LORA_WEIGHT_NAME)
    pipe = load_pipeline("tiny:sd", "sd15", model_cache, device="cpu")
    pipe.set_progress_bar_config(disable=True)
    pipe.load_lora_weights(str(tmp), weight_name=LORA_WEIGHT_NAME)
    e = cfg.evaluate
    images = render(pipe, prompts, seeds_for(e.seed, e.num_seeds), "ref", steps=e.num_inference_steps,
                    guidance=e.guidance_scale, resolution=RES, batch_size=e.batch_size, device=torch.device("cpu"))
    dataset = write_dataset(LABEL_DATASET.at(label), [(RES, RES)] * len(images))
    for i, sample in enumerate(images):  # a tenth grey: alike, not identical
        Image.fromarray(np.round((sample.pixels * 0.9 + 0.05) * 255).astype(np.uint8)).save(dataset / f"{i:04d}.png")


@pytest.fixture(scope="module")
def factory_run(model_cache: Path, tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    """A run whose train stage ran for real (3 steps, a checkpoint each step, keep 1 but
    best_of_last 2); then step 3 and the final LoRA are planted as zero LoRAs; evaluate and
    deploy run on it."""
    from lora_factory.lifecycle import start_run
    from tasks.deploy import deploy_task
    from tasks.evaluate.task import evaluate_task
    from tasks.train import train_task

    tmp = tmp_path_factory.mktemp("best")
    (tmp / "home").mkdir()
    (tmp / "home" / "models").symlink_to(model_cache)
    cfg = load_config("tiny", {
        "home": str(tmp / "home"), "evaluate.best_of_last": 2, "evaluate.efficiency_images": 0,
        # The references are step 2's own renders (a tenth grey): not a copy the gate should stop.
        "evaluate.min_scores": {}, "evaluate.exact_copy_threshold": 1.0, "deploy.gate.on_missing": "skip", "deploy.gate.min_fidelity_gain": None,
        "deploy.gate.max_adherence_drop": None, "deploy.gate.max_copy_risk": None}, environ={})
    ref = start_run(cfg, ["lighthouse"])
    run = ref.run_dir()
    for stage in ("crawl", "curate"):
        run.set_stage(stage, DONE)
    label = Path(run.store.local_path(f"{run.key}/label"))
    write_dataset(LABEL_DATASET.at(label), [(RES, RES)] * 2)
    LABEL_CAPTION_STATS.write(label, CaptionStats(num_images=2, captioned=2, coverage=1.0, words_mean=7,
                                                  words_median=7, words_max=8, trigger_word="lfstyle"))
    LABEL_LABELS.write(label, [{"item_id": f"{i:064x}", "file_name": f"{i:04d}.png", "caption": "lfstyle",
                                "caption_source": "topic", "license": "CC0"} for i in range(2)])
    run.set_stage("label", DONE)
    TUNE_TRAIN_CONFIG.write(Path(run.store.local_path(f"{run.key}/tune")), small_cfg(
        resolution=RES, max_steps=3, batch_size=2, learning_rate=5e-2, checkpoint_every=1, keep_checkpoints=1,
        sample_every=2, sample_steps=2))
    run.set_stage("tune", DONE)
    train_task.fn(ref)
    train = run.stage_path("train")
    published = sorted(p.name for p in TRAIN_CHECKPOINTS.at(train).iterdir())
    # Before planting: the last checkpoint is the final weights, so its kohya conversion is the exporter's file.
    as_lora_file(TRAIN_CHECKPOINTS.at(train) / "step-000003", TRAIN_LORA.at(train) / KOHYA_WEIGHT_NAME,
                 tmp / "step3_kohya.safetensors", kohya_family="sd15")
    _reference_images(cfg, run, label, model_cache, tmp / "step2")
    _zero_up(TRAIN_CHECKPOINTS.at(train) / "step-000003" / WEIGHTS)
    _zero_up(TRAIN_LORA.at(train) / LORA_WEIGHT_NAME)
    evaluate_task.fn(ref)
    record = deploy_task.fn(ref)
    return run, published, record, tmp


def test_train_publishes_the_last_k_checkpoints_weights_only(factory_run) -> None:
    run, published, _, _ = factory_run
    assert published == ["step-000002", "step-000003"]  # best_of_last 2 although keep_checkpoints is 1
    folder = TRAIN_CHECKPOINTS.at(run.stage_path("train")) / "step-000002"
    assert sorted(p.name for p in folder.iterdir()) == [WEIGHTS]  # no optimizer / RNG state


def test_a_checkpoint_converts_to_the_kohya_file_the_exporter_writes(factory_run) -> None:
    run, _, _, tmp = factory_run
    exported = TRAIN_LORA.at(run.stage_path("train")) / KOHYA_WEIGHT_NAME
    converted = tmp / "step3_kohya.safetensors"
    want, got = load_file(str(exported)), load_file(str(converted))
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    from safetensors import safe_open

    with safe_open(str(exported), framework="pt") as a, safe_open(str(converted), framework="pt") as b:
        assert a.metadata() == b.metadata() and "modelspec.trigger_phrase" in a.metadata()


def test_evaluate_picks_the_planted_better_checkpoint_and_records_every_score(factory_run) -> None:
    run, _, _, _ = factory_run
    out = run.stage_path("evaluate")
    result = json.loads(EVAL_RESULT.at(out).read_text())
    best = result["best_checkpoint"]
    scores = {c["name"]: c["score"] for c in best["candidates"]}
    assert list(scores) == ["step-000002", "step-000003", FINAL]
    assert best["chosen"] == "step-000002" and scores["step-000002"] > max(scores["step-000003"], scores[FINAL])
    assert best["shipped"] == f"{EVAL_LORA.run_path}/{LORA_WEIGHT_NAME}" == result["lora_path"]
    assert best["embedding"] == "pixels" and len(best["prompts"]) == 2
    assert result["sample_progression"] == ["train/samples/step-000002.png"]  # relative to the run directory
    report = EVAL_REPORT.at(out).read_text()
    progression = report.split("<h2>Sample progression during training</h2>")[1]
    assert "alt='step-000002' src='data:image/" in progression
    assert "<h2>Best checkpoint</h2>" in report and "<td>step-000002</td>" in report and "<b>chosen</b>" in report


def test_the_chosen_folder_holds_the_checkpoint_in_both_formats(factory_run, tmp_path: Path) -> None:
    run, _, _, _ = factory_run
    chosen = EVAL_LORA.at(run.stage_path("evaluate"))
    train = run.stage_path("train")
    expected = as_lora_file(TRAIN_CHECKPOINTS.at(train) / "step-000002", TRAIN_LORA.at(train) / LORA_WEIGHT_NAME,
                            tmp_path / LORA_WEIGHT_NAME)
    assert _digest(chosen / LORA_WEIGHT_NAME) == _digest(expected)
    assert _values(chosen / KOHYA_WEIGHT_NAME) == _values(chosen / LORA_WEIGHT_NAME)  # the same matrices
    assert _values(chosen / KOHYA_WEIGHT_NAME) != _values(TRAIN_LORA.at(train) / KOHYA_WEIGHT_NAME)
    assert json.loads((chosen / "training_args.json").read_text())["chosen_checkpoint"] == "step-000002"


def test_deploy_registers_and_exports_the_chosen_checkpoint(factory_run) -> None:
    from mlflow.tracking import MlflowClient

    run, _, record, tmp = factory_run
    chosen = EVAL_LORA.at(run.stage_path("evaluate"))
    assert record["verdict"] == "promoted", record["reason"]
    store = tmp / "home" / "loras" / "lighthouse" / f"v{record['version']}"
    for name in (LORA_WEIGHT_NAME, KOHYA_WEIGHT_NAME):
        assert _digest(store / name) == _digest(chosen / name), name
    client = MlflowClient(f"sqlite:///{tmp / 'home'}/mlflow.db")
    model_run = client.get_model_version("lighthouse", record["version"]).run_id
    logged = Path(client.download_artifacts(model_run, "model", str(tmp / "logged")))
    adapters = [p for p in logged.rglob("*.safetensors")]
    assert adapters and all(_digest(p) == _digest(chosen / LORA_WEIGHT_NAME) for p in adapters)


def test_off_publishes_nothing_and_the_report_says_the_final_lora_is_the_runs(tmp_path: Path) -> None:
    root = tmp_path / "ckpt" / "step-000004"
    root.mkdir(parents=True)
    save_file({"unet.a.lora_A.default.weight": torch.ones(2, 2)}, str(root / WEIGHTS))
    (root / STATE).write_bytes(b"")
    assert publish_weights(tmp_path / "ckpt", tmp_path / "out", 0) == [] and not (tmp_path / "out").exists()
    assert [p.name for p in publish_weights(tmp_path / "ckpt", tmp_path / "out", 3)] == ["step-000004"]
    assert best_checkpoint_section({}) == ""  # off: the report has no such section
