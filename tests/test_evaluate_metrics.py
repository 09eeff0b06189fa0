"""Evaluate's metrics, findings, prompts and verdict on controlled inputs (no models)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import save_file

from lora_factory.config import EvaluateConfig
from lora_factory.schemas import MetricPair
from tasks.evaluate import findings, metrics
from tasks.evaluate.embedders import load_embedder, pixel_embedding
from tasks.evaluate.generate import Sample
from tasks.evaluate.prompts import Concept, build_prompts, seeds_for, strip_trigger
from tasks.evaluate.score import EmbeddingSet, Scored, headline_scores, score_set


def unit(angle_deg: float) -> np.ndarray:
    """A unit vector in the plane at ``angle_deg``: cosines between them are known."""
    a = math.radians(angle_deg)
    return np.array([math.cos(a), math.sin(a), 0.0])


def rows(*angles: float) -> np.ndarray:
    return np.stack([unit(a) for a in angles])


def test_clip_t_and_fidelity_are_the_known_cosines() -> None:
    images, texts = rows(0, 90), rows(60, 90)
    assert metrics.clip_t(images, texts) == pytest.approx([0.5, 1.0])
    # image at 0 deg vs references at 0 and 60: mean of 1 and 0.5
    assert metrics.fidelity(rows(0), rows(0, 60)) == pytest.approx([0.75])


def test_a_collapsed_set_scores_lower_diversity() -> None:
    spread = rows(0, 90, 180)
    collapsed = rows(0, 1, 2)
    assert metrics.diversity(spread) == pytest.approx(np.mean([1.0, 2.0, 1.0]))
    assert metrics.diversity(collapsed) < 0.001 < metrics.diversity(spread)
    assert metrics.diversity(rows(0)) is None


def test_copy_risk_finds_the_nearest_training_image_and_flags_an_exact_copy() -> None:
    reference = rows(0, 90)
    generated = rows(89.9, 45, 180)  # a near copy of ref 1, between both, far from both
    risk = metrics.copy_risk(generated, reference, near=0.95, exact=0.9999)
    assert risk.nearest.tolist()[:2] == [1, 0]
    assert risk.similarity[1] == pytest.approx(math.cos(math.radians(45)))
    assert risk.share_near == pytest.approx(1 / 3)
    assert risk.exact == [0]
    assert metrics.copy_risk(rows(45), reference, 0.95, 0.9999).exact == []


def test_leakage_is_zero_for_untouched_class_images_and_grows_with_drift() -> None:
    assert metrics.leakage(rows(0, 30), rows(0, 30)) == pytest.approx([0, 0])
    assert metrics.leakage(rows(0), rows(90)) == pytest.approx([1.0])


def test_overall_score_is_the_documented_weighted_sum_of_measured_scores() -> None:
    scores = {"fidelity_gain": 0.2, "adherence_delta": 0.1, "diversity": 0.4, "copy_risk": 0.5, "leakage": None}
    assert metrics.overall_score(scores) == pytest.approx(0.2 + 0.05 + 0.1 - 0.25)


def test_score_set_compares_lora_and_base_on_triggered_prompts_and_leakage_on_class_prompts() -> None:
    cfg = EvaluateConfig(near_copy_threshold=0.95, exact_copy_threshold=0.9999)
    kinds = ["concept", "concept", "leakage"]
    es = EmbeddingSet("pixels", base=rows(90, 100, 0), lora=rows(10, 20, 60), reference=rows(0),
                      text=None)
    out = Scored()
    score_set(es, kinds, cfg, out)
    fid = out.metrics["pixels_fidelity"]
    assert fid.base == pytest.approx(np.mean([0.0, math.cos(math.radians(100))]))
    assert fid.lora == pytest.approx(np.mean([math.cos(math.radians(10)), math.cos(math.radians(20))]))
    assert out.metrics["leakage_pixels"].lora == pytest.approx(0.5)
    scores = headline_scores(out, "pixels")
    assert scores["fidelity_gain"] == pytest.approx(fid.lora - fid.base)
    assert scores["leakage"] == pytest.approx(0.5)
    assert scores["adherence_delta"] is None  # pixels has no text tower
    assert scores["overall_score"] == pytest.approx(metrics.overall_score(scores))


def test_pixel_embedding_needs_no_weights_and_separates_colours() -> None:
    emb = load_embedder("pixels", "unused", Path("."))
    assert not emb.random and emb.embed_texts is None
    red, red2, blue = (Image.new("RGB", (32, 32), c) for c in ((220, 20, 20), (200, 30, 25), (20, 20, 220)))
    v = emb.embed_images([red, red2, blue])
    assert np.linalg.norm(v, axis=1) == pytest.approx([1, 1, 1])
    assert v[0] @ v[1] > 0.95 > v[0] @ v[2]
    assert np.array_equal(pixel_embedding(red), pixel_embedding(red))


def _sample(value: float, side: str = "lora", i: int = 0, noise: bool = True) -> Sample:
    rng = np.random.default_rng(i)
    px = np.full((8, 8, 3), value, np.float32) + (rng.random((8, 8, 3), np.float32) * 0.3 if noise else 0)
    return Sample(i, 100 + i, side, px)


def test_black_nan_and_blank_images_are_named_findings() -> None:
    nan = _sample(0.5, i=1)
    nan.pixels[0, 0, 0] = np.nan
    found = findings.image_findings([_sample(0.0, i=0, noise=False), nan, _sample(0.6, i=2, noise=False),
                                     _sample(0.4, i=3)], "LoRA")
    by_code = {f.code: f for f in found}
    assert set(by_code) == {"black_images", "nan_images", "blank_images"}
    assert by_code["black_images"].items == ["lora_p0_s100.png"] and by_code["black_images"].severity == "error"
    assert by_code["nan_images"].items == ["lora_p1_s101.png"]
    assert findings.image_findings([_sample(0.4, i=3)], "LoRA") == []


def _flat(colour: tuple[float, float, float], i: int = 0) -> Sample:
    return Sample(i, 100 + i, "lora", np.broadcast_to(np.asarray(colour, np.float32), (8, 8, 3)).copy())


def test_flat_or_black_images_like_the_training_images_are_learned_not_a_failure() -> None:
    red, grey, black = (0.8, 0.15, 0.15), (0.5, 0.5, 0.5), (0.0, 0.0, 0.0)
    flat_red_refs = [_flat(red).pixels, _flat((0.75, 0.2, 0.1)).pixels]
    found = findings.image_findings([_flat(red, 0), _flat((0.82, 0.1, 0.18), 1)], "LoRA", flat_red_refs)
    assert [(f.code, f.severity) for f in found] == [("like_training_images", "info")]
    assert found[0].items == ["lora_p0_s100.png", "lora_p1_s101.png"]
    # Flat in another colour than the flat training images, or flat while they are not: a failure.
    found = findings.image_findings([_flat(grey, 0), _flat(red, 1)], "LoRA", flat_red_refs)
    assert {f.code: f.items for f in found} == {"blank_images": ["lora_p0_s100.png"],
                                                "like_training_images": ["lora_p1_s101.png"]}
    textured_refs = [_sample(0.4, i=5).pixels]
    assert [f.code for f in findings.image_findings([_flat(red)], "LoRA", textured_refs)] == ["blank_images"]
    # Black images: learned from black training images, a failure otherwise.
    assert [f.code for f in findings.image_findings([_flat(black)], "LoRA", [_flat(black).pixels])] == [
        "like_training_images"]
    assert [f.code for f in findings.image_findings([_flat(black)], "LoRA", flat_red_refs)] == ["black_images"]


def test_reference_pixels_are_the_training_images_in_0_1(tmp_path: Path) -> None:
    Image.new("RGB", (4, 6), (255, 0, 51)).save(tmp_path / "a.png")
    (ref,) = findings.reference_pixels([tmp_path / "a.png"])
    assert ref.shape == (6, 4, 3) and ref[0, 0] == pytest.approx([1.0, 0.0, 0.2])


def _lora_file(path: Path, scale: float) -> Path:
    g = torch.Generator().manual_seed(0)
    save_file({"unet.down.lora_A.weight": torch.randn(4, 16, generator=g),
               "unet.down.lora_B.weight": scale * torch.randn(16, 4, generator=g)}, str(path))
    return path


def test_a_zero_lora_is_a_named_finding(tmp_path: Path) -> None:
    zero = findings.weight_delta_rms(_lora_file(tmp_path / "zero.safetensors", 0.0))
    live = findings.weight_delta_rms(_lora_file(tmp_path / "live.safetensors", 0.01))
    assert zero == 0.0 and live > 1e-3
    assert [f.code for f in findings.zero_lora_finding(zero, 1e-7)] == ["zero_lora"]
    assert findings.zero_lora_finding(live, 1e-7) == []


def test_kohya_weight_delta_uses_alpha_over_rank(tmp_path: Path) -> None:
    down, up = torch.ones(2, 3), torch.ones(3, 2)
    save_file({"lora_unet_x.lora_down.weight": down, "lora_unet_x.lora_up.weight": up,
               "lora_unet_x.alpha": torch.tensor(1.0)}, str(tmp_path / "k.safetensors"))
    assert findings.weight_delta_rms(tmp_path / "k.safetensors") == pytest.approx(0.5 * 2.0)


def test_identical_to_base_and_flat_loss_findings() -> None:
    base = [_sample(0.4, "base", i) for i in range(2)]
    same = [Sample(s.prompt_index, s.seed, "lora", s.pixels.copy()) for s in base]
    assert [f.code for f in findings.identical_finding(base, same)] == ["identical_to_base"]
    assert findings.identical_finding(base, [_sample(0.1, "lora", i) for i in range(2)]) == []
    assert [f.code for f in findings.flat_loss_finding([0.5] * 20)] == ["flat_loss"]
    assert findings.flat_loss_finding(list(np.linspace(0.5, 0.2, 20))) == []
    assert findings.flat_loss_finding([0.5] * 3) == []  # too short to judge


def test_prompts_are_deterministic_and_leakage_prompts_have_no_trigger() -> None:
    concept = Concept(trigger="lfstyle", topic="red barns", summary="red barns in fields", tags=("barn", "red"))
    args = (["a photo of {topic}, {trigger}"], ["{trigger}, {concept} as a watercolour painting"],
            ["a photo of {topic}", "{trigger} {topic} at night"], ["lfstyle, a barn at dusk"])
    prompts = build_prompts(concept, *args)
    assert prompts == build_prompts(concept, *args)
    assert [p.kind for p in prompts] == ["concept", "concept", "heldout", "generalisation", "leakage", "leakage"]
    assert prompts[1].text == "lfstyle, barn, red"
    assert prompts[3].text == "lfstyle, red barns in fields as a watercolour painting"
    assert all("lfstyle" not in p.text for p in prompts if p.kind == "leakage")
    assert strip_trigger("lfstyle, a red barn", "lfstyle") == "a red barn"
    assert seeds_for(7, 3) == [7, 8, 9]


def test_metric_pair_gain_is_lora_minus_base() -> None:
    assert MetricPair(base=0.25, lora=0.5).gain == pytest.approx(0.25)


def test_the_model_card_gets_the_scores_in_place_of_not_evaluated_yet() -> None:
    from training.model_card import render_model_card, with_eval_scores

    card = render_model_card(base_ref="tiny:sd", family="sd15", trigger_word="lfstyle", train_config={"rank": 4},
                             dataset={"images": 3}, result={"steps": 2}, sample_grid="samples.png")
    assert "Not evaluated yet" in card
    scored = with_eval_scores(card, {"overall_score": 0.25, "fidelity_gain": 0.125},
                              ["random_scorer: the clip scorer is a random tiny model"])
    assert "Not evaluated yet" not in scored
    assert "- overall_score: 0.2500" in scored and "random tiny model" in scored
    assert "## Samples" in scored and "## GPU targets" in scored  # the rest of the card is kept
    front = yaml.safe_load(scored.split("---\n", 2)[1])
    metrics_ = front["model-index"][0]["results"][0]["metrics"]
    assert {m["type"]: m["value"] for m in metrics_} == {"fidelity_gain": 0.125, "overall_score": 0.25}
    assert front["base_model"] == "tiny:sd"


def test_a_conv_lora_fits_its_conv_layer_and_a_wrong_one_does_not() -> None:
    from tasks.evaluate.portability import _fits

    conv = torch.nn.Conv2d(4, 32, 3)
    assert _fits(conv, torch.zeros(2, 4, 3, 3), torch.zeros(32, 2, 1, 1))  # LoCon shapes
    assert not _fits(conv, torch.zeros(2, 8, 3, 3), torch.zeros(32, 2, 1, 1))
    assert _fits(torch.nn.Linear(16, 8), torch.zeros(2, 16), torch.zeros(8, 2))
