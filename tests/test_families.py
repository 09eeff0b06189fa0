"""Model families: the family is read from the base model's ``model_index.json`` (issue 17); a
pipeline no family trains stops the run in preflight, before anything is crawled."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lora_factory.errors import ModelUnavailableError
from lora_factory.lifecycle import preflight
from lora_factory.models.families import detect_family
from lora_factory.profiles import load_config
from training.families import family_for


def _pipeline_dir(root: Path, class_name: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "model_index.json").write_text(json.dumps({"_class_name": class_name, "_diffusers_version": "0.42.1"}))
    return root


@pytest.mark.parametrize(("ref", "family"), [("tiny:sd", "sd15"), ("tiny:sdxl", "sdxl"), ("tiny:flux", "flux"),
                                             ("tiny:sd3", "sd3")])
def test_a_tiny_base_model_names_its_family_without_being_built(ref: str, family: str, tmp_path: Path) -> None:
    assert detect_family(ref, tmp_path / "models") == family
    assert not (tmp_path / "models").exists()
    assert family_for(family).name == family


@pytest.mark.parametrize(("class_name", "family"), [("StableDiffusionXLPipeline", "sdxl"), ("FluxPipeline", "flux"),
                                                     ("StableDiffusion3Pipeline", "sd3")])
def test_a_local_pipeline_directory_is_read(class_name: str, family: str, tmp_path: Path) -> None:
    assert detect_family(str(_pipeline_dir(tmp_path / "base", class_name)), tmp_path) == family


def test_an_unknown_pipeline_or_a_wrong_declared_family_is_one_line(tmp_path: Path) -> None:
    base = str(_pipeline_dir(tmp_path / "base", "KandinskyV22Pipeline"))
    with pytest.raises(ModelUnavailableError, match="KandinskyV22Pipeline, which no model family trains") as info:
        detect_family(base, tmp_path)
    assert "\n" not in str(info.value) and "FluxPipeline (flux)" in str(info.value)
    with pytest.raises(ModelUnavailableError, match="models.base_family is 'sd15'"):
        detect_family("tiny:flux", tmp_path, "sd15")


def _cfg(tmp_path: Path, base: str):  # noqa: ANN202 - a FactoryConfig
    return load_config("tiny", {"home": str(tmp_path / "home"), "models.base": base, "models.base_family": None},
                       environ={})


def test_preflight_stores_the_detected_family_in_the_runs_config(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, "tiny:sdxl")
    assert cfg.models.base_family == "sdxl"  # a tiny or local model's family is read when the config loads
    cfg.models.base_family = None  # as for a hub model: preflight reads it
    preflight(cfg, ["lighthouse"])
    assert cfg.models.base_family == "sdxl"


def test_preflight_stops_on_a_pipeline_no_family_trains_before_any_run_exists(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, str(_pipeline_dir(tmp_path / "base", "KandinskyV22Pipeline")))
    with pytest.raises(ModelUnavailableError, match="no model family trains"):
        preflight(cfg, ["lighthouse"])
    assert not list((tmp_path / "home").rglob("run.json"))


def test_the_tuner_gives_flux_its_targets_and_no_min_snr_and_counts_a_quantised_base() -> None:
    from lora_factory.config import TrainConfig
    from training.tuner import TuneRequest, TuneStats, estimate, family_row, recommend

    stats = TuneStats(num_images=40, caption_coverage=0.9, words_mean=12.0, tags_per_caption=1.0, text_diversity=0.6,
                      visual_diversity=0.35, short_side_median=2000.0, non_square_share=0.3, domain="photo")
    for name in ("flux", "tiny-flux"):
        cfg = recommend(TuneRequest(stats, family_row(name))).config
        assert cfg.target_modules == list(family_for("flux").default_targets) and cfg.snr_gamma is None, name
    row = family_row("flux")
    gib = {q: estimate(TrainConfig(resolution=1024, rank=16, mixed_precision="bf16", optimizer="adamw8bit",
                                   gradient_checkpointing=True, base_quantization=q, device="cuda"), row).gib()
           for q in ("none", "int8", "nf4")}
    assert gib["nf4"] < gib["int8"] < gib["none"]
    assert gib["none"] - gib["nf4"] > 0.7 * row.denoiser_params * 1.48 / 2**30  # 2 - 0.52 bytes a weight
