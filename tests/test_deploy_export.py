"""Export targets: a ComfyUI/A1111 loras folder (kohya file with modelspec.* metadata, the
training's tag frequency kept, A1111 sidecar), the store (local and S3 on moto), fp16 and fused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from deploy.export import (
    ExportError,
    fp16_copy,
    fused_pipeline,
    modelspec,
    to_loras_folder,
    to_store,
)
from lora_factory.storage import open_store
from training.export_kohya import KOHYA_WEIGHT_NAME, dataset_metadata, stamp_metadata
from training.lora import LORA_WEIGHT_NAME


def test_loras_folder_gets_the_kohya_file_with_modelspec_and_tag_frequency(tiny_lora: Path, tmp_path: Path) -> None:
    src = tmp_path / "lora"
    src.mkdir()
    (src / KOHYA_WEIGHT_NAME).write_bytes((tiny_lora / KOHYA_WEIGHT_NAME).read_bytes())
    stamp_metadata(src / KOHYA_WEIGHT_NAME, dataset_metadata("lfstyle", {"lighthouse": 2, "sea": 1}, 2, 1, None))
    meta = modelspec("sd15", "lighthouse v3", "lfstyle", 64, "CC0: 2", "a test")
    out = to_loras_folder(src, tmp_path / "ComfyUI" / "models" / "loras", "lighthouse", "sd15", meta, "lfstyle")
    assert out.name == "lighthouse.safetensors" and not list(out.parent.glob(".*tmp"))
    with safe_open(str(out), "pt") as f:
        got = f.metadata()
    assert got["modelspec.sai_model_spec"] == "1.0.0"
    assert got["modelspec.architecture"] == "stable-diffusion-v1/lora"
    assert got["modelspec.trigger_phrase"] == "lfstyle" and got["modelspec.title"] == "lighthouse v3"
    assert got["modelspec.resolution"] == "64x64" and got["modelspec.license"] == "CC0: 2"
    assert json.loads(got["ss_tag_frequency"]) and got["ss_network_dim"] == "4"  # the training's keys stay
    a, b = load_file(str(out)), load_file(str(tiny_lora / KOHYA_WEIGHT_NAME))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    sidecar = json.loads((out.parent / "lighthouse.json").read_text())
    assert sidecar["activation text"] == "lfstyle" and sidecar["sd version"] == "SD1"
    with pytest.raises(ExportError, match="no lora_kohya.safetensors"):
        to_loras_folder(tmp_path, tmp_path / "x", "n", "sd15", meta, "t")


@pytest.mark.parametrize("where", ["local", "s3"])
def test_store_export(where: str, tiny_lora: Path, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    if where == "s3":
        store = open_store(request.getfixturevalue("s3_bucket"), request.getfixturevalue("moto_s3"))
    else:
        store = open_store(str(tmp_path / "store"))
    url = to_store(tiny_lora, store, "lighthouse", "3", {"verdict": "promoted"})
    assert url.endswith("loras/lighthouse/v3")
    keys = set(store.list("loras/lighthouse/v3"))
    assert {f"loras/lighthouse/v3/{n}" for n in (LORA_WEIGHT_NAME, KOHYA_WEIGHT_NAME, "decision.json")} <= keys
    assert store.read_bytes(f"loras/lighthouse/v3/{LORA_WEIGHT_NAME}") == (tiny_lora / LORA_WEIGHT_NAME).read_bytes()
    assert json.loads(store.read_bytes("loras/lighthouse/v3/decision.json")) == {"verdict": "promoted"}


@pytest.mark.e2e
def test_fp16_and_fused_variants_match_the_adapter(tiny_lora: Path, model_cache: Path, tmp_path: Path) -> None:
    from lora_factory.models import load_pipeline

    half = load_file(str(fp16_copy(tiny_lora, tmp_path / "fp16")))
    full = load_file(str(tiny_lora / LORA_WEIGHT_NAME))
    assert half.keys() == full.keys() and all(v.dtype == torch.float16 for v in half.values())

    fused = fused_pipeline(tiny_lora, "tiny:sd", "sd15", model_cache, tmp_path / "fused")
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    text = torch.randn(1, 77, 32, generator=torch.Generator().manual_seed(1))
    outs = []
    for pipe in (load_pipeline("tiny:sd", "sd15", model_cache), load_pipeline(str(fused), "sd15", model_cache)):
        if not outs:
            pipe.load_lora_weights(str(tiny_lora), weight_name=LORA_WEIGHT_NAME)
        with torch.no_grad():
            outs.append(pipe.unet(latents, 10, encoder_hidden_states=text).sample)
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-4, atol=1e-5)
