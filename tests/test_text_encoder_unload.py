"""The text encoders (T5 and the CLIPs) are freed once the text-embedding cache holds every
caption (Flux and SD3, issue 17): the modules are gone (no reference keeps them alive), the
pipeline's parameter count drops by theirs, the cached embeddings are the ones they gave, and a
sample grid from the cached embeddings is the one the text prompt gave. A training run frees
them before it loads the transformer (peak memory: the larger phase, not the sum), reports what
it unloaded and which encoders the embeddings came from, and trains the uncached run's weights."""

from __future__ import annotations

import gc
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import FluxTransformer2DModel
from PIL import Image

from lora_factory.models import load_pipeline
from tests.training_helpers import lora_tensors, small_cfg, tiny_job, write_dataset
from training.callbacks import Callback, TrainState
from training.conditioning import make_conditioner
from training.families import family_for
from training.samples import render_samples
from training.save import SAMPLE_GRID_NAME

CAPTIONS = ["lfstyle, a yellow ellipse on a plain background", "lfstyle, a red square"]
CASES = [("tiny:flux", "flux", ("text_encoder", "text_encoder_2")),
         ("tiny:sd3", "sd3", ("text_encoder", "text_encoder_2", "text_encoder_3"))]


def _params(pipe: object) -> int:
    return sum(p.numel() for m in pipe.components.values() if isinstance(m, torch.nn.Module)  # type: ignore[attr-defined]
               for p in m.parameters())


@pytest.mark.parametrize(("ref", "name", "freed"), CASES)
def test_the_encoders_are_freed_after_caching_and_the_cached_embeddings_render_the_same_samples(
        ref: str, name: str, freed: tuple[str, ...], model_cache: Path, tmp_path: Path) -> None:
    pipe = load_pipeline(ref, None, model_cache)
    family = family_for(name)
    cond = make_conditioner(pipe, family, small_cfg(), torch.device("cpu"), torch.float32, tmp_path / "features")
    with torch.no_grad():
        before = {c: family.encode_prompt(pipe, [c], torch.device("cpu")) for c in [*CAPTIONS, ""]}
    expected = render_samples(pipe, {"prompt": CAPTIONS}, 7, 2, 64, torch.device("cpu"), tmp_path / "text.png",
                              **family.inference_kwargs(pipe))
    encoders = [weakref.ref(getattr(pipe, n)) for n in freed]
    freed_params = sum(p.numel() for n in freed for p in getattr(pipe, n).parameters())
    total = _params(pipe)

    assert cond.unload_encoders([*CAPTIONS, CAPTIONS[0]]) == freed
    gc.collect()
    assert all(getattr(pipe, n) is None for n in freed)
    assert all(e() is None for e in encoders)  # freed, not just detached
    assert _params(pipe) == total - freed_params and freed_params > 0
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


class _Residency(Callback):
    """Which text encoders this run built are still alive when it builds its transformer and at
    every step: a torch module-registration hook sees each model as it is constructed."""

    def __init__(self) -> None:
        from transformers import CLIPTextModel, T5EncoderModel

        self.encoder_classes = (CLIPTextModel, T5EncoderModel)
        self.encoders: list[weakref.ref[torch.nn.Module]] = []
        self.transformers: list[weakref.ref[torch.nn.Module]] = []
        self.at_transformer_build: list[list[str]] = []
        self.at_steps: list[tuple[list[str], int]] = []

    @staticmethod
    def alive(refs: list[weakref.ref[torch.nn.Module]]) -> list[str]:
        gc.collect()
        return sorted(type(m).__name__ for m in (r() for r in refs) if m is not None)

    @staticmethod
    def _new(module: torch.nn.Module, refs: list[weakref.ref[torch.nn.Module]]) -> bool:
        """Seen for the first time (the hook fires for each of its submodules)."""
        if any(r() is module for r in refs):
            return False
        refs.append(weakref.ref(module))
        return True

    def registration_hook(self, module: torch.nn.Module, name: str, sub: torch.nn.Module) -> None:
        if isinstance(module, self.encoder_classes):
            self._new(module, self.encoders)
        if isinstance(module, FluxTransformer2DModel) and self._new(module, self.transformers):
            self.at_transformer_build.append(self.alive(self.encoders))

    def on_step(self, state: TrainState, metrics: object) -> None:
        self.at_steps.append((self.alive(self.encoders), len(self.alive(self.transformers))))


def test_a_cached_flux_run_frees_the_encoders_before_the_transformer_loads_and_trains_the_same_weights(
        model_cache: Path, tmp_path: Path) -> None:
    from torch.nn.modules.module import register_module_module_registration_hook

    from training.trainer import train_lora

    dataset = write_dataset(tmp_path / "ds", [(64, 64), (80, 64)])
    cfg = small_cfg(max_steps=2, batch_size=2, caption_dropout=0.5, sample_every=2, sample_steps=2)
    load_pipeline("tiny:flux", None, model_cache)  # the tiny model is built before the census
    census = _Residency()
    handle = register_module_module_registration_hook(census.registration_hook)
    try:
        result = train_lora(tiny_job(dataset, cfg, tmp_path / "o", model_cache, base_ref="tiny:flux", family=None,
                                     feature_cache_dir=tmp_path / "features"), callbacks=[census])
    finally:
        handle.remove()
    assert result.cache["unloaded_encoders"] == ["text_encoder", "text_encoder_2"]
    assert result.cache["text"]["misses"] > 0  # filled before the steps, read by them
    assert {n: e["class"] for n, e in result.cache["encoded_with"].items()} == {
        "text_encoder": "CLIPTextModel", "text_encoder_2": "T5EncoderModel"}
    assert (tmp_path / "o" / SAMPLE_GRID_NAME).is_file()  # rendered from the cached embeddings
    # The run built both encoders, then its one transformer once they were gone; none at any step.
    assert len(census.encoders) == 2 and census.at_transformer_build == [[]]
    assert census.at_steps == [([], 1), ([], 1)]

    plain = cfg.model_copy(update={"cache_latents": False, "cache_text_embeddings": False})
    uncached = train_lora(tiny_job(dataset, plain, tmp_path / "plain", model_cache, base_ref="tiny:flux", family=None))
    assert uncached.cache["unloaded_encoders"] == [] and uncached.cache["encoded_with"] == result.cache["encoded_with"]
    a, b = lora_tensors(tmp_path / "o"), lora_tensors(tmp_path / "plain")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


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
