"""The SD3 kohya / ComfyUI file (issue 17): sd-scripts' names over the original MMDiT modules,
q / k / v fused into one ``qkv`` LoRA. Checked without ComfyUI by an independent route: the file
is read back through a map derived from diffusers' own single-file SD3 converter
(``training.families.sd3_keys``), loaded with ``load_lora_weights``, and must give the same
outputs and images as the diffusers file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from lora_factory.models import load_pipeline
from tests.training_helpers import adapted_pipe, assert_key_check_flags_a_squeezed_layer, sd3_output
from training.export_kohya import KOHYA_WEIGHT_NAME, save_kohya
from training.families import family_for
from training.lora import LORA_WEIGHT_NAME, lora_state, save_lora

SD3 = family_for("sd3")
# Every linear layer the export names: both streams' attention (SD3.5's second attention too),
# MLPs, the modulations (the last block's and the final one store scale and shift swapped),
# embedders and the output projection.
ALL = [*SD3.default_targets, "attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0", "ff.net.0.proj",
       "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2", "norm1.linear", "norm1_context.linear",
       "norm_out.linear", "proj_out", "context_embedder", "time_text_embed.timestep_embedder.linear_1",
       "time_text_embed.text_embedder.linear_2"]


def _image(pipe: object) -> np.ndarray:
    out = pipe("lfstyle, a lighthouse", num_inference_steps=2, height=64, width=64,  # type: ignore[operator]
               generator=torch.Generator().manual_seed(3), output_type="np", **SD3.inference_kwargs(pipe))
    return (out.images[0] * 255).round().astype(np.uint8)


@pytest.fixture(scope="module")
def exported(model_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.Tensor, set[str]]:
    folder = tmp_path_factory.mktemp("sd3-kohya")
    pipe = adapted_pipe("tiny:sd3", "sd3", ALL, 8.0, model_cache)
    save_lora(pipe, folder)
    peft = {f"{c}.{k}": v for c, s in lora_state(pipe).items() for k, v in s.items()}
    save_kohya(peft, folder / KOHYA_WEIGHT_NAME, SD3, 4, 8.0, {"resolution": 64, "name": "x"})
    return folder, sd3_output(pipe), {k.removeprefix("transformer.").rsplit(".lora_", 1)[0] for k in peft}


def test_the_kohya_file_uses_sd_scripts_mmdit_names_with_fused_qkv(exported: tuple[Path, torch.Tensor, set[str]]) -> None:
    folder, _, _ = exported
    kohya = load_file(str(folder / KOHYA_WEIGHT_NAME))
    qkv = "lora_unet_joint_blocks_0_x_block_attn_qkv"
    assert kohya[f"{qkv}.lora_down.weight"].shape == (12, 32)  # q, k, v: rank 4 each, stacked
    assert kohya[f"{qkv}.lora_up.weight"].shape == (96, 12)  # block diagonal
    assert kohya[f"{qkv}.alpha"].item() == 24.0  # 3 x alpha: alpha / rows of down stays 8 / 4
    up = kohya[f"{qkv}.lora_up.weight"]
    assert torch.count_nonzero(up[:32, 4:]) == 0 and torch.count_nonzero(up[32:64, :4]) == 0
    for name in ("joint_blocks_0_context_block_attn_qkv", "joint_blocks_0_x_block_attn2_qkv",
                 "joint_blocks_1_context_block_attn_qkv", "joint_blocks_0_context_block_attn_proj",
                 "joint_blocks_1_x_block_mlp_fc2", "final_layer_adaLN_modulation_1", "t_embedder_mlp_0"):
        assert f"lora_unet_{name}.lora_down.weight" in kohya, name
    # The last block's context stream only feeds the attention (no output projection, no MLP).
    assert not any(k.startswith("lora_unet_joint_blocks_1_context_block_attn_proj") for k in kohya)
    with safe_open(str(folder / KOHYA_WEIGHT_NAME), "pt") as f:
        meta = f.metadata()
    assert meta["ss_base_model_version"] == "sd3" and meta["modelspec.sai_model_spec"] == "1.0.0"
    assert meta["modelspec.architecture"] == SD3.modelspec_architecture and meta["modelspec.prediction_type"] == "flow"


def test_the_map_from_diffusers_converter_places_qkv_thirds_and_swapped_modulations(model_cache: Path) -> None:
    from training.families.sd3_keys import original_to_diffusers

    pipe = load_pipeline("tiny:sd3", None, model_cache)
    row_map = original_to_diffusers(pipe.transformer.config)
    assert row_map["joint_blocks.0.context_block.attn.qkv"] == [
        ("transformer_blocks.0.attn.add_q_proj", (0, 1)), ("transformer_blocks.0.attn.add_k_proj", (2, 3)),
        ("transformer_blocks.0.attn.add_v_proj", (4, 5))]
    assert row_map["final_layer.adaLN_modulation.1"] == [("norm_out.linear", (3, 4, 5, 0, 1, 2))]
    assert row_map["joint_blocks.1.context_block.adaLN_modulation.1"][0][1] == (3, 4, 5, 0, 1, 2)
    assert row_map["joint_blocks.0.context_block.adaLN_modulation.1"][0][1] == (0, 1, 2, 3, 4, 5)


def test_both_files_load_with_every_module_and_give_the_same_outputs_and_images(
        exported: tuple[Path, torch.Tensor, set[str]], model_cache: Path) -> None:
    from peft.utils import get_peft_model_state_dict

    folder, expected, trained = exported
    images = []
    for name in (LORA_WEIGHT_NAME, KOHYA_WEIGHT_NAME):
        pipe = load_pipeline("tiny:sd3", None, model_cache)
        if name == LORA_WEIGHT_NAME:
            pipe.load_lora_weights(str(folder), weight_name=name)
        else:
            SD3.load_kohya(pipe, folder / name)
        adapter = pipe.get_active_adapters()[0]
        loaded = {k.rsplit(".lora_", 1)[0] for k in get_peft_model_state_dict(pipe.transformer, adapter_name=adapter)}
        assert loaded == trained, name  # nothing missing, nothing extra
        # The fused qkv LoRA is one rank-12 product where the diffusers file has three of rank 4:
        # the same sums in another order, so float32 rounding (~1e-6) and nothing more.
        torch.testing.assert_close(sd3_output(pipe), expected, rtol=1e-4, atol=1e-5)
        images.append(_image(pipe))
    # The same image up to that rounding: at most one 8-bit level on a pixel (the evaluator allows 2).
    assert np.abs(images[0].astype(np.int16) - images[1]).max() <= 1
    base = _image(load_pipeline("tiny:sd3", None, model_cache))
    assert not np.array_equal(base, images[0])  # and the LoRA does change them


def test_a_name_no_sd3_layer_has_stops_with_one_line(exported: tuple[Path, torch.Tensor, set[str]],
                                                      model_cache: Path, tmp_path: Path) -> None:
    folder, _, _ = exported
    kohya = load_file(str(folder / KOHYA_WEIGHT_NAME))
    kohya["lora_unet_joint_blocks_9_x_block_attn_qkv.lora_down.weight"] = torch.zeros(4, 32)
    save_file(kohya, str(tmp_path / "bad.safetensors"))
    with pytest.raises(ValueError, match="lora_unet_joint_blocks_9_x_block_attn_qkv names no layer"):
        SD3.load_kohya(load_pipeline("tiny:sd3", None, model_cache), tmp_path / "bad.safetensors")
    with pytest.raises(ValueError, match="no kohya SD3 name for LoRA module 'pos_embed.proj'"):
        SD3.kohya_state({"transformer.pos_embed.proj.lora_A.weight": torch.zeros(4, 16),
                         "transformer.pos_embed.proj.lora_B.weight": torch.zeros(32, 4)}, 4.0)


def test_the_evaluators_key_check_takes_both_sd3_files_and_flags_a_squeezed_qkv(
        exported: tuple[Path, torch.Tensor, set[str]], model_cache: Path, tmp_path: Path) -> None:
    assert_key_check_flags_a_squeezed_layer(load_pipeline("tiny:sd3", None, model_cache), "sd3", exported[0],
                                            "lora_unet_joint_blocks_0_x_block_attn_qkv", tmp_path)


def test_the_loras_folder_export_keeps_the_sd3_architecture_and_names(
        exported: tuple[Path, torch.Tensor, set[str]], tmp_path: Path) -> None:
    import json

    from deploy.export import modelspec, to_loras_folder

    folder, _, _ = exported
    meta = modelspec("sd3", "lighthouse v1", "lfstyle", 64, "CC0: 2")
    out = to_loras_folder(folder, tmp_path / "ComfyUI" / "models" / "loras", "lighthouse", "sd3", meta, "lfstyle")
    with safe_open(str(out), "pt") as f:
        stamped, keys = f.metadata(), set(f.keys())
    # Deploy's stamp once wrote "sd3/lora" over the trained file's architecture.
    assert stamped["modelspec.architecture"] == SD3.modelspec_architecture
    assert stamped["modelspec.prediction_type"] == "flow" and stamped["modelspec.title"] == "lighthouse v1"
    assert keys == set(load_file(str(folder / KOHYA_WEIGHT_NAME)))
    assert json.loads((out.parent / "lighthouse.json").read_text())["sd version"] == "Unknown"
