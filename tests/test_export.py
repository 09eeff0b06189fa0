"""Exported files: the kohya file gives the same UNet output as the diffusers file (alpha != rank,
so a wrong alpha would show), carries ss_* metadata; the model card has parseable front matter."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from tests.training_helpers import small_cfg, tiny_job, write_dataset
from training.export_kohya import KOHYA_WEIGHT_NAME, peft_to_kohya
from training.lora import LORA_WEIGHT_NAME
from training.model_card import read_front_matter
from training.save import MODEL_CARD_NAME, SAMPLE_GRID_NAME
from training.trainer import train_lora


@pytest.mark.parametrize("family,ref", [("sd15", "tiny:sd"), ("sdxl", "tiny:sdxl")])
def test_kohya_and_diffusers_files_give_the_same_unet_output(
    family: str, ref: str, model_cache: Path, tmp_path: Path
) -> None:
    from lora_factory.models import load_pipeline

    dataset = write_dataset(tmp_path / "ds", [(64, 64), (72, 64)])
    cfg = small_cfg(max_steps=2, batch_size=2, rank=4, alpha=8.0, learning_rate=5e-2,
                    sample_every=2, sample_steps=2, sample_prompts=["lfstyle a", "lfstyle b"])
    out = tmp_path / "lora"
    train_lora(tiny_job(dataset, cfg, out, model_cache, base_ref=ref, family=family,
                        card={"trigger_word": "lfstyle"}))

    with safe_open(str(out / KOHYA_WEIGHT_NAME), "pt") as f:
        keys, meta = list(f.keys()), f.metadata()
        alphas = {float(f.get_tensor(k)) for k in keys if k.endswith(".alpha")}
    assert keys and all(k.startswith("lora_unet_") for k in keys)
    assert {k.rsplit(".", 1)[0].rsplit(".", 1)[-1] for k in keys} >= {"lora_down", "lora_up"}
    assert alphas == {8.0}
    assert meta["ss_network_dim"] == "4" and meta["ss_network_alpha"] == "8.0"
    assert meta["ss_base_model_version"] == ("sd_v1" if family == "sd15" else "sdxl_base_v1-0")

    gen = torch.Generator().manual_seed(0)
    latents = torch.randn(1, 4, 8, 8, generator=gen)
    outputs = []
    for weight_name in (None, LORA_WEIGHT_NAME, KOHYA_WEIGHT_NAME):
        pipe = load_pipeline(ref, family, model_cache)
        if weight_name:
            pipe.load_lora_weights(str(out), weight_name=weight_name)
        with torch.no_grad():
            if family == "sd15":
                ids = pipe.tokenizer(["lfstyle"], padding="max_length", return_tensors="pt").input_ids
                cond, added = pipe.text_encoder(ids)[0], None
            else:
                cond, _, pooled, _ = pipe.encode_prompt("lfstyle", do_classifier_free_guidance=False)
                added = {"text_embeds": pooled, "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]])}
            outputs.append(pipe.unet(latents, torch.tensor([500]), cond, added_cond_kwargs=added).sample)
    base, diffusers_out, kohya_out = outputs
    assert not torch.allclose(base, diffusers_out)
    torch.testing.assert_close(kohya_out, diffusers_out, rtol=1e-5, atol=1e-6)

    card = read_front_matter(out / MODEL_CARD_NAME)
    assert card["base_model"] == ref and card["instance_prompt"] == "lfstyle"
    assert card["lora_factory"]["train"]["rank"] == 4
    assert card["lora_factory"]["dataset"]["images"] == 2
    assert card["widget"][0]["output"]["url"] == SAMPLE_GRID_NAME
    assert (out / SAMPLE_GRID_NAME).is_file() and (out / "samples" / "step-000002.png").is_file()
    assert "GPU targets" in (out / MODEL_CARD_NAME).read_text()
    assert json.loads((out / "training_args.json").read_text())["steps"] == 2


def test_peft_to_kohya_names_text_encoder_modules_and_refuses_unknown_keys() -> None:
    t = torch.zeros(2, 2)
    out = peft_to_kohya({"text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight": t,
                         "text_encoder_2.text_model.encoder.layers.0.self_attn.q_proj.lora_B.weight": t},
                        alpha=4, family="sdxl")
    assert set(out) == {"lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight",
                        "lora_te1_text_model_encoder_layers_0_self_attn_q_proj.alpha",
                        "lora_te2_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight"}
    # SD1.x has one text encoder, which kohya (and so A1111 / ComfyUI) names lora_te_.
    sd15 = peft_to_kohya({"text_encoder.text_model.encoder.layers.0.mlp.fc1.lora_A.weight": t}, alpha=4,
                         family="sd15")
    assert "lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight" in sd15
    with pytest.raises(ValueError, match="no known component"):
        peft_to_kohya({"vae.x.lora_A.weight": t}, alpha=4)
