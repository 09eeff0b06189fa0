"""Trainer features on the tiny models: aspect buckets, the cross-run feature cache, augmentation,
text-encoder LoRA, Prodigy, gradient checkpointing and prior preservation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from tests.training_helpers import lora_tensors, small_cfg, tiny_job, write_dataset
from training.export_kohya import KOHYA_WEIGHT_NAME
from training.lora import LORA_WEIGHT_NAME
from training.trainer import train_lora

MIXED = [(160, 96), (96, 160), (128, 128), (170, 100), (100, 170), (64, 64)]


@pytest.fixture(scope="module")
def mixed_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("mixed"), MIXED)


def same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_buckets_follow_the_images_and_the_loss_stays_finite(mixed_dataset: Path, model_cache: Path,
                                                              tmp_path: Path) -> None:
    cfg = small_cfg(max_steps=6, batch_size=2, learning_rate=1e-3)
    result = train_lora(tiny_job(mixed_dataset, cfg, tmp_path / "out", model_cache))
    assert sum(result.buckets.values()) == len(MIXED)
    assert len(result.buckets) >= 3  # wide, tall and square images train at their own shapes
    assert any(int(w) > int(h) for w, h in (b.split("x") for b in result.buckets))
    assert any(int(w) < int(h) for w, h in (b.split("x") for b in result.buckets))
    assert all(torch.isfinite(torch.tensor(result.losses)))


def test_latent_and_text_caches_are_reused_on_a_second_run(mixed_dataset: Path, model_cache: Path,
                                                           tmp_path: Path) -> None:
    cfg = small_cfg(max_steps=6, batch_size=2, learning_rate=1e-3)
    cache = tmp_path / "features"
    first = train_lora(tiny_job(mixed_dataset, cfg, tmp_path / "a", model_cache, seed=1,
                                feature_cache_dir=cache))
    assert first.cache["latents"]["misses"] > 0 and first.cache["vae_encodes"] > 0
    second = train_lora(tiny_job(mixed_dataset, cfg, tmp_path / "b", model_cache, seed=1,
                                 feature_cache_dir=cache))
    assert second.cache["vae_encodes"] == 0
    assert second.cache["latents"]["misses"] == 0 and second.cache["latents"]["hits"] >= 12
    assert second.cache["text"]["misses"] == 0 and second.cache["text"]["hits"] >= 12
    # The cache changes nothing but the time: cached, uncached and cold runs save equal tensors.
    uncached = train_lora(tiny_job(mixed_dataset, cfg.model_copy(update={
        "cache_latents": False, "cache_text_embeddings": False}), tmp_path / "c", model_cache, seed=1))
    assert uncached.cache["vae_encodes"] == 12
    a, b, c = (lora_tensors(tmp_path / n) for n in "abc")
    assert same_tensors(a, b) and same_tensors(a, c)


def test_another_vae_gets_its_own_cache_namespace(mixed_dataset: Path, model_cache: Path,
                                                  tmp_path: Path) -> None:
    cfg = small_cfg(max_steps=1, batch_size=2)
    cache = tmp_path / "features"
    train_lora(tiny_job(mixed_dataset, cfg, tmp_path / "a", model_cache, feature_cache_dir=cache))
    other = train_lora(tiny_job(mixed_dataset, cfg, tmp_path / "b", model_cache,
                                base_ref="tiny:sdxl", family="sdxl", feature_cache_dir=cache))
    assert other.cache["latents"]["hits"] == 0 and other.cache["vae_encodes"] > 0
    assert len(list((cache / "latents").iterdir())) == 2


def test_augmented_runs_are_reproducible_and_differ_from_plain_ones(mixed_dataset: Path, model_cache: Path,
                                                                    tmp_path: Path) -> None:
    aug = small_cfg(max_steps=4, batch_size=2, learning_rate=1e-3, random_flip=True, caption_dropout=0.3,
                    shuffle_tags=True, repeats=2)
    for name in ("a", "b"):
        train_lora(tiny_job(mixed_dataset, aug, tmp_path / name, model_cache, seed=3,
                            feature_cache_dir=tmp_path / "cache"))
    assert (tmp_path / "cache" / "latents").is_dir()
    assert not (tmp_path / "cache" / "text").exists()  # shuffled captions are not cached
    plain = aug.model_copy(update={"random_flip": False, "caption_dropout": 0.0, "shuffle_tags": False})
    train_lora(tiny_job(mixed_dataset, plain, tmp_path / "p", model_cache, seed=3))
    a, b, p = (lora_tensors(tmp_path / n) for n in "abp")
    assert same_tensors(a, b)
    assert not same_tensors(a, p)


@pytest.mark.parametrize("family,ref,kohya_prefixes", [
    ("sd15", "tiny:sd", {"lora_unet_", "lora_te_"}),
    ("sdxl", "tiny:sdxl", {"lora_unet_", "lora_te1_", "lora_te2_"}),
])
def test_text_encoder_lora_is_trained_saved_and_loaded(family: str, ref: str, kohya_prefixes: set[str],
                                                        mixed_dataset: Path, model_cache: Path,
                                                        tmp_path: Path) -> None:
    from lora_factory.models import load_pipeline

    cfg = small_cfg(max_steps=3, batch_size=2, learning_rate=5e-2, train_text_encoder=True,
                    text_encoder_lr=1e-2)
    out = tmp_path / "lora"
    train_lora(tiny_job(mixed_dataset, cfg, out, model_cache, base_ref=ref, family=family))
    tensors = lora_tensors(out)
    assert any(k.startswith("text_encoder.") for k in tensors)
    assert any(k.startswith("unet.") for k in tensors)
    with safe_open(str(out / KOHYA_WEIGHT_NAME), "pt") as f:
        keys = f.keys()
    prefixes = {"_".join(k.split("_", 2)[:2]) + "_" for k in keys}
    assert prefixes == kohya_prefixes

    pipe = load_pipeline(ref, family, model_cache)
    ids = pipe.tokenizer(["lfstyle, a shape"], padding="max_length", max_length=16,
                         truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        before = pipe.text_encoder(ids)[0]
        pipe.load_lora_weights(str(out), weight_name=LORA_WEIGHT_NAME)
        after = pipe.text_encoder(ids)[0]
    assert not torch.allclose(before, after)  # the text encoder's LoRA loaded and acts


def test_prodigy_trains(mixed_dataset: Path, model_cache: Path, tmp_path: Path) -> None:
    cfg = small_cfg(max_steps=4, batch_size=2, optimizer="prodigy", learning_rate=1.0)
    result = train_lora(tiny_job(mixed_dataset, cfg, tmp_path / "out", model_cache))
    ups = [v for k, v in lora_tensors(tmp_path / "out").items() if "lora_B" in k or "lora.up" in k]
    assert ups and any(float(v.abs().max()) > 0 for v in ups)  # lora_B starts at zero: it moved
    assert all(torch.isfinite(torch.tensor(result.losses)))


def test_gradient_checkpointing_gives_the_same_weights(mixed_dataset: Path, model_cache: Path,
                                                       tmp_path: Path) -> None:
    cfg = small_cfg(max_steps=2, batch_size=2, learning_rate=1e-3)
    train_lora(tiny_job(mixed_dataset, cfg, tmp_path / "a", model_cache))
    train_lora(tiny_job(mixed_dataset, cfg.model_copy(update={"gradient_checkpointing": True}),
                        tmp_path / "b", model_cache))
    a, b = lora_tensors(tmp_path / "a"), lora_tensors(tmp_path / "b")
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_prior_preservation_generates_class_images_once_and_adds_a_prior_loss(
        mixed_dataset: Path, model_cache: Path, tmp_path: Path) -> None:
    cfg = small_cfg(max_steps=2, batch_size=2, prior_preservation=True, class_prompt="a photo of a shape",
                    num_class_images=3, class_inference_steps=2)
    metrics: list[dict[str, float]] = []
    cache = tmp_path / "features"
    train_lora(tiny_job(mixed_dataset, cfg, tmp_path / "a", model_cache, feature_cache_dir=cache),
               on_step=lambda _s, m: metrics.append(m))
    images = sorted((cache / "class_images").glob("*/class-*.png"))
    assert len(images) == 3
    assert all("prior_loss" in m and m["prior_loss"] > 0 for m in metrics)
    stamps = [p.stat().st_mtime_ns for p in images]
    train_lora(tiny_job(mixed_dataset, cfg, tmp_path / "b", model_cache, feature_cache_dir=cache))
    assert [p.stat().st_mtime_ns for p in images] == stamps  # reused, not regenerated
    no_prior = cfg.model_copy(update={"prior_preservation": False})
    train_lora(tiny_job(mixed_dataset, no_prior, tmp_path / "c", model_cache))
    assert not same_tensors(lora_tensors(tmp_path / "a"), lora_tensors(tmp_path / "c"))


def test_prior_preservation_without_a_class_prompt_is_a_config_error() -> None:
    with pytest.raises(ValueError, match="class_prompt"):
        small_cfg(prior_preservation=True)


def test_a_bucket_step_off_the_model_grid_is_a_one_line_error(mixed_dataset: Path, model_cache: Path,
                                                                tmp_path: Path) -> None:
    from lora_factory.errors import StageError

    with pytest.raises(StageError, match="bucket_step 24 is not a multiple of 16") as info:
        train_lora(tiny_job(mixed_dataset, small_cfg(bucket_step=24), tmp_path / "o", model_cache))
    assert "\n" not in str(info.value)
