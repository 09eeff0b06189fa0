"""Each family's LoRA card carries the hub tags of its kind and its hub base's licence, and its
A1111 / Forge sidecar the "sd version" those UIs can read (issue 17). Pure: no model is built."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import save_file

from deploy.export import modelspec, to_loras_folder
from training.export_kohya import KOHYA_WEIGHT_NAME
from training.families import COMMON_CARD_TAGS
from training.model_card import render_model_card

COMMON = {"text-to-image", "diffusers-training", "diffusers", "lora", "template:sd-lora", "lora-factory"}
CASES = [
    ("flux", {"flux", "flux-diffusers"}, "other", "flux-1-dev-non-commercial-license", "Flux"),
    ("sd3", {"sd3", "sd3-diffusers"}, "other", "stabilityai-ai-community", "Unknown"),
    ("sd15", {"stable-diffusion", "stable-diffusion-diffusers"}, "creativeml-openrail-m", None, "SD1"),
    ("sdxl", {"stable-diffusion-xl", "stable-diffusion-xl-diffusers"}, "openrail++", None, "SDXL"),
]


def _front(family: str) -> dict:
    card = render_model_card(base_ref=f"tiny:{family}", family=family, trigger_word="lfstyle",
                             train_config={"rank": 4}, dataset={"images": 2}, result={"steps": 1})
    return yaml.safe_load(card.split("---\n", 2)[1])


@pytest.mark.parametrize(("family", "own_tags", "licence", "licence_name"), [c[:4] for c in CASES])
def test_the_card_has_the_familys_tags_and_its_base_models_licence(
        family: str, own_tags: set[str], licence: str, licence_name: str | None) -> None:
    front = _front(family)
    assert set(front["tags"]) == COMMON | own_tags and len(front["tags"]) == len(set(front["tags"]))
    assert front["license"] == licence
    assert front.get("license_name") == licence_name
    assert bool(front.get("license_link")) == (licence == "other")  # the hub asks for a link with "other"
    others = {t for _, tags, *_ in CASES if tags != own_tags for t in tags}
    assert not others & set(front["tags"])  # no other family's tags


def test_the_common_tags_are_diffusers_training_scripts_set_plus_ours() -> None:
    assert set(COMMON_CARD_TAGS) == COMMON


@pytest.mark.parametrize(("family", "sd_version"), [(c[0], c[4]) for c in CASES])
def test_the_sidecar_names_the_version_the_ui_reads(family: str, sd_version: str, tmp_path: Path) -> None:
    src = tmp_path / "lora"
    src.mkdir()
    save_file({"lora_unet_x.lora_down.weight": torch.zeros(1, 1)}, str(src / KOHYA_WEIGHT_NAME))
    meta = modelspec(family, "lighthouse v1", "lfstyle", 64, "CC0: 1")
    out = to_loras_folder(src, tmp_path / "loras", "lighthouse", family, meta, "lfstyle")
    assert json.loads((out.parent / "lighthouse.json").read_text())["sd version"] == sd_version
