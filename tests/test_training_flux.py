"""The Flux family on ``tiny:flux`` (CPU): flow-matching training lowers the loss, the feature
cache changes nothing but the time, and both export files load through ``load_lora_weights``
(the kohya one through diffusers' own converter) with no missing keys and the same outputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from lora_factory.models import load_pipeline
from tests.training_helpers import (
    adapted_pipe,
    assert_key_check_flags_a_squeezed_layer,
    lora_tensors,
    small_cfg,
    tiny_job,
    write_dataset,
)
from training.export_kohya import KOHYA_WEIGHT_NAME, save_kohya
from training.families import family_for
from training.families.flux import flux_kohya_state
from training.lora import LORA_WEIGHT_NAME, lora_state, save_lora

EIGHT = [(64, 64), (80, 64), (64, 80), (96, 96), (72, 64), (64, 72), (128, 96), (96, 128)]


@pytest.fixture(scope="module")
def eight(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("eight"), EIGHT)


def test_overfitting_eight_images_lowers_the_flow_matching_loss(eight: Path, model_cache: Path,
                                                                  tmp_path: Path) -> None:
    from training.trainer import train_lora

    cfg = small_cfg(max_steps=24, batch_size=4, learning_rate=1e-2)
    result = train_lora(tiny_job(eight, cfg, tmp_path / "o", model_cache, base_ref="tiny:flux", family=None))
    assert np.mean(result.losses[-8:]) < np.mean(result.losses[:8]) - 0.05, result.losses
    a = lora_tensors(tmp_path / "o")
    # The default targets reach the attention and MLP projections of both kinds of block.
    assert any(".single_transformer_blocks.0.proj_mlp." in k for k in a)
    assert any(".transformer_blocks.0.ff_context.net.2." in k for k in a)
    with safe_open(str(tmp_path / "o" / LORA_WEIGHT_NAME), "pt") as f:
        assert f.metadata()["modelspec.architecture"] == "flux-1-dev/lora"


def test_cached_and_uncached_features_give_identical_weights(eight: Path, model_cache: Path, tmp_path: Path) -> None:
    from training.trainer import train_lora

    cfg = small_cfg(max_steps=3, batch_size=4, learning_rate=1e-2)
    cached = train_lora(tiny_job(eight, cfg, tmp_path / "cached", model_cache, base_ref="tiny:flux", family=None,
                                 feature_cache_dir=tmp_path / "features"))
    assert cached.cache["latents"]["misses"] > 0 and cached.cache["text"]["hits"] > 0
    uncached = cfg.model_copy(update={"cache_latents": False, "cache_text_embeddings": False})
    train_lora(tiny_job(eight, uncached, tmp_path / "plain", model_cache, base_ref="tiny:flux", family=None))
    a, b = lora_tensors(tmp_path / "cached"), lora_tensors(tmp_path / "plain")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _adapted(model_cache: Path, targets: list[str], alpha: float) -> object:
    return adapted_pipe("tiny:flux", "flux", targets, alpha, model_cache)


def _output(pipe: object) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    inputs = {"hidden_states": torch.randn(1, 16, 64, generator=g),
              "encoder_hidden_states": torch.randn(1, 8, 32, generator=g),
              "pooled_projections": torch.randn(1, 32, generator=g), "timestep": torch.tensor([0.6]),
              "guidance": torch.tensor([1.0]), "txt_ids": torch.zeros(8, 3),
              "img_ids": pipe._prepare_latent_image_ids(1, 4, 4, "cpu", torch.float32)}  # type: ignore[attr-defined]
    with torch.no_grad():
        return pipe.transformer(**inputs, return_dict=False)[0]  # type: ignore[attr-defined]


def _loaded(model_cache: Path, folder: Path, weight_name: str) -> tuple[torch.Tensor, set[str]]:
    from peft.utils import get_peft_model_state_dict

    pipe = load_pipeline("tiny:flux", None, model_cache)
    pipe.load_lora_weights(str(folder), weight_name=weight_name, adapter_name="x")
    keys = {k for k in get_peft_model_state_dict(pipe.transformer, adapter_name="x") if "lora_" in k}
    return _output(pipe), keys


# Double-block modules only: diffusers' kohya converter hard-codes FLUX.1's widths for the single
# blocks' fused linear1 (tested at those widths below).
DOUBLE = [f"transformer_blocks.0.{m}" for m in family_for("flux").default_targets if m != "proj_mlp"]


def test_the_diffusers_and_kohya_files_load_with_every_key_and_give_the_same_outputs(
        model_cache: Path, tmp_path: Path) -> None:
    pipe = _adapted(model_cache, DOUBLE, alpha=8.0)
    expected = _output(pipe)
    save_lora(pipe, tmp_path)
    peft = {f"{c}.{k}": v for c, s in lora_state(pipe).items() for k, v in s.items()}
    save_kohya(peft, tmp_path / KOHYA_WEIGHT_NAME, family_for("flux"), 4, 8.0, {"resolution": 64})
    trained = {k.removeprefix("transformer.").replace(".weight", "") for k in peft}
    for name in (LORA_WEIGHT_NAME, KOHYA_WEIGHT_NAME):
        out, keys = _loaded(model_cache, tmp_path, name)
        assert {k.replace(".weight", "") for k in keys} == trained, name  # nothing missing, nothing extra
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    with safe_open(str(tmp_path / KOHYA_WEIGHT_NAME), "pt") as f:
        meta, keys = f.metadata(), set(f.keys())
    assert meta["ss_base_model_version"] == "flux1" and meta["modelspec.sai_model_spec"] == "1.0.0"
    assert "lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight" in keys
    assert "lora_unet_double_blocks_0_txt_mlp_2.lora_up.weight" in keys


def test_every_default_target_round_trips_through_the_diffusers_file(model_cache: Path, tmp_path: Path) -> None:
    pipe = _adapted(model_cache, list(family_for("flux").default_targets), alpha=4.0)
    save_lora(pipe, tmp_path)
    out, keys = _loaded(model_cache, tmp_path, LORA_WEIGHT_NAME)
    assert keys == {k for s in lora_state(pipe).values() for k in s}  # nothing dropped on the way
    assert any("single_transformer_blocks.0.proj_mlp" in k for k in keys)
    torch.testing.assert_close(out, _output(pipe), rtol=1e-5, atol=1e-6)


def test_fused_single_block_layers_convert_back_exactly_at_flux1_widths(tmp_path: Path) -> None:
    """linear1 = q, k, v and the MLP input: one kohya LoRA of rank 4r with a block-diagonal up
    weight, which diffusers' converter (written for FLUX.1's 3072 / 12288 widths) splits back."""
    from diffusers import FluxPipeline
    from safetensors.torch import save_file

    g, r, width, alpha = torch.Generator().manual_seed(0), 2, 3072, 4.0
    outs = {"attn.to_q": width, "attn.to_k": width, "attn.to_v": width, "proj_mlp": 4 * width}
    peft = {}
    for module, out in outs.items():
        prefix = f"transformer.single_transformer_blocks.0.{module}"
        peft[f"{prefix}.lora_A.weight"] = torch.randn(r, width, generator=g)
        peft[f"{prefix}.lora_B.weight"] = torch.randn(out, r, generator=g)
    save_file(flux_kohya_state(peft, alpha), str(tmp_path / "k.safetensors"))
    back = FluxPipeline.lora_state_dict(str(tmp_path / "k.safetensors"))
    for module in outs:
        prefix = f"transformer.single_transformer_blocks.0.{module}"
        want = peft[f"{prefix}.lora_B.weight"] @ peft[f"{prefix}.lora_A.weight"] * (alpha / r)
        got = back[f"{prefix}.lora_B.weight"] @ back[f"{prefix}.lora_A.weight"]
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_a_sigkilled_flux_run_resumes_to_the_same_weights(model_cache: Path, tmp_path: Path) -> None:
    """The SIGKILL machinery of test_training_resume (tests/resume_child.py) on tiny:flux."""
    import json
    import os
    import signal
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    dataset = write_dataset(tmp_path / "ds", [(80, 64), (64, 96), (128, 128), (96, 72)])
    ckpt_dir = tmp_path / "ckpt"
    ckpt_dir.mkdir()
    common = [str(dataset), str(model_cache), str(ckpt_dir), str(tmp_path / "out"), str(tmp_path / "log.jsonl")]
    env = {**os.environ, "PYTHONPATH": str(root), "RESUME_CHILD_BASE": "tiny:flux"}

    def child(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "tests.resume_child", *common, *args], cwd=root, env=env,
                              text=True, capture_output=True, timeout=900)

    threads = str(torch.get_num_threads())
    killed = child("5", threads)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    resumed = child("0", threads, str(tmp_path / "ref"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    summary = json.loads(resumed.stdout.strip().splitlines()[-2])
    assert summary == {"resumed_from": 3, "steps": 8}
    a, b = lora_tensors(tmp_path / "out"), lora_tensors(tmp_path / "ref")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_the_evaluators_key_check_takes_both_flux_files_and_flags_a_squeezed_fused_layer(
        model_cache: Path, tmp_path: Path) -> None:
    """The evaluator checks every module against the base: the diffusers file by the transformer's
    module paths, the kohya file by sd-scripts' names (a fused layer's summed width)."""
    pipe = _adapted(model_cache, list(family_for("flux").default_targets), alpha=4.0)
    save_lora(pipe, tmp_path)
    peft = {f"{c}.{k}": v for c, s in lora_state(pipe).items() for k, v in s.items()}
    save_kohya(peft, tmp_path / KOHYA_WEIGHT_NAME, family_for("flux"), 4, 4.0, {"resolution": 64})
    assert_key_check_flags_a_squeezed_layer(load_pipeline("tiny:flux", None, model_cache), "flux", tmp_path,
                                            "lora_unet_single_blocks_0_linear1", tmp_path)


@pytest.mark.parametrize("quant", ["nf4", "int8"])
def test_a_quantised_base_trains_the_lora_on_the_cpu_and_exports_an_unquantised_lora(
        quant: str, eight: Path, model_cache: Path, tmp_path: Path) -> None:
    """``train.base_quantization``: the transformer's linear layers are bitsandbytes NF4 / int8
    modules (quantised on the CPU, where diffusers' quantizer refuses), peft wraps them, only the
    LoRA trains, and the file loads into the full-precision pipeline with every key."""
    import bitsandbytes as bnb

    from training.families import family_of_job
    from training.setup import add_trainable_loras, load_frozen_pipeline
    from training.trainer import train_lora

    cfg = small_cfg(max_steps=4, batch_size=4, learning_rate=1e-2, base_quantization=quant)
    job = tiny_job(eight, cfg, tmp_path / "o", model_cache, base_ref="tiny:flux", family="flux")
    family = family_of_job(job.base_ref, job.family, job.cache_dir)
    pipe = load_frozen_pipeline(job, family, torch.device("cpu"), torch.float32)
    named = add_trainable_loras(pipe, cfg, 0, family)
    bnb_kind = bnb.nn.Linear4bit if quant == "nf4" else bnb.nn.Linear8bitLt
    to_q = pipe.transformer.transformer_blocks[0].attn.to_q
    assert isinstance(to_q.base_layer, bnb_kind) and type(to_q).__module__ == "peft.tuners.lora.bnb"
    trainable = {n: p for n, p in pipe.transformer.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n and p.dtype == torch.float32 for n, p in trainable.items())
    assert len(named) >= len(trainable)

    result = train_lora(job)
    assert all(np.isfinite(result.losses)) and len(result.losses) == 4
    trained = lora_tensors(tmp_path / "o")
    assert all(v.abs().sum() > 0 for k, v in trained.items() if "lora_B" in k)  # moved off the zero init
    _, keys = _loaded(model_cache, tmp_path / "o", LORA_WEIGHT_NAME)
    assert {k.removeprefix("transformer.") for k in trained} == keys
