"""T5 is freed once the text-embedding cache holds every caption (Flux and SD3, issue 17): the
module is gone (no reference keeps it alive), the pipeline's parameter count drops by T5's, the
cached embeddings are the ones T5 gave, and a sample grid from the cached embeddings is the one
the text prompt gave. A training run reports what it unloaded and trains as before."""

from __future__ import annotations

import gc
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lora_factory.models import load_pipeline
from tests.training_helpers import small_cfg, tiny_job, write_dataset
from training.conditioning import make_conditioner
from training.families import family_for
from training.samples import render_samples
from training.save import SAMPLE_GRID_NAME

CAPTIONS = ["lfstyle, a yellow ellipse on a plain background", "lfstyle, a red square"]
CASES = [("tiny:flux", "flux", "text_encoder_2"), ("tiny:sd3", "sd3", "text_encoder_3")]


def _params(pipe: object) -> int:
    return sum(p.numel() for m in pipe.components.values() if isinstance(m, torch.nn.Module)  # type: ignore[attr-defined]
               for p in m.parameters())


@pytest.mark.parametrize(("ref", "name", "t5"), CASES)
def test_t5_is_freed_after_caching_and_the_cached_embeddings_render_the_same_samples(
        ref: str, name: str, t5: str, model_cache: Path, tmp_path: Path) -> None:
    pipe = load_pipeline(ref, None, model_cache)
    family = family_for(name)
    cond = make_conditioner(pipe, family, small_cfg(), torch.device("cpu"), torch.float32, tmp_path / "features")
    with torch.no_grad():
        before = {c: family.encode_prompt(pipe, [c], torch.device("cpu")) for c in [*CAPTIONS, ""]}
    expected = render_samples(pipe, {"prompt": CAPTIONS}, 7, 2, 64, torch.device("cpu"), tmp_path / "text.png",
                              **family.inference_kwargs(pipe))
    encoder = weakref.ref(getattr(pipe, t5))
    t5_params = sum(p.numel() for p in getattr(pipe, t5).parameters())
    total = _params(pipe)

    assert cond.unload_encoders([*CAPTIONS, CAPTIONS[0]]) == (t5,)
    gc.collect()
    assert getattr(pipe, t5) is None and encoder() is None  # freed, not just detached
    assert _params(pipe) == total - t5_params and t5_params > 0
    for caption, want in before.items():
        got = cond.texts([caption])
        assert all(torch.equal(got[k], want[k]) for k in want), caption
    cached = render_samples(pipe, cond.pipeline_prompt(CAPTIONS), 7, 2, 64, torch.device("cpu"),
                            tmp_path / "cached.png", **family.inference_kwargs(pipe))
    # Within one 8-bit level: the pipeline encodes the prompts as one batch, the cache one by one
    # (CPU matmuls round a batch differently in the last bits; SD3 shows it on a few pixels).
    diff = np.abs(np.asarray(Image.open(expected), dtype=np.int16) - np.asarray(Image.open(cached), dtype=np.int16))
    assert diff.max() <= 1 and (diff > 0).mean() < 0.01


def test_without_the_text_cache_t5_stays(model_cache: Path) -> None:
    pipe = load_pipeline("tiny:flux", None, model_cache)
    cond = make_conditioner(pipe, family_for("flux"), small_cfg(), torch.device("cpu"), torch.float32, None)
    assert cond.unload_encoders(CAPTIONS) == () and pipe.text_encoder_2 is not None
    assert cond.pipeline_prompt(CAPTIONS) == {"prompt": CAPTIONS}


def test_a_cached_flux_run_unloads_t5_and_renders_its_sample_grid(model_cache: Path, tmp_path: Path) -> None:
    from training.trainer import train_lora

    dataset = write_dataset(tmp_path / "ds", [(64, 64), (80, 64)])
    cfg = small_cfg(max_steps=2, batch_size=2, caption_dropout=0.5, sample_every=2, sample_steps=2)
    result = train_lora(tiny_job(dataset, cfg, tmp_path / "o", model_cache, base_ref="tiny:flux", family=None,
                                 feature_cache_dir=tmp_path / "features"))
    assert result.cache["unloaded_encoders"] == ["text_encoder_2"]
    assert result.cache["text"]["misses"] > 0  # filled before the steps, read by them
    assert (tmp_path / "o" / SAMPLE_GRID_NAME).is_file()  # rendered from the cached embeddings


@pytest.mark.parametrize(("ref", "name"), [("tiny:sd", "sd15"), ("tiny:sdxl", "sdxl")])
def test_unet_families_render_from_precomputed_embeddings(model_cache: Path, ref: str, name: str) -> None:
    """The UNet families keep their encoders, but their ``embeds_kwargs`` still names the
    pipeline's own arguments: the same images as the text prompt with the same negative."""
    family = family_for(name)
    pipe = load_pipeline(ref, name, model_cache)
    with torch.no_grad():
        prompt = family.encode_prompt(pipe, CAPTIONS, torch.device("cpu"))
        negative = family.encode_prompt(pipe, ["x"] * len(CAPTIONS), torch.device("cpu"))
    common = {"num_inference_steps": 2, "height": 64, "width": 64, "output_type": "np"}
    from_text = pipe(prompt=CAPTIONS, negative_prompt=["x"] * len(CAPTIONS), generator=torch.Generator().manual_seed(0),
                     **common).images
    from_embeds = pipe(**family.embeds_kwargs(prompt, negative), generator=torch.Generator().manual_seed(0),
                       **common).images
    assert np.abs(from_text - from_embeds).max() < 1e-4
