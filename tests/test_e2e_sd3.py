"""The whole factory with ``--profile tiny-sd3`` (issue 17), crawl to serve, on the smallest crawl
that trains: every stage done, both SD3 LoRA files (diffusers, and the kohya / ComfyUI one with
sd-scripts' names) load with every module, the evaluator found them portable, and the serving
API generates with the run's adapter as the concept's champion."""

from __future__ import annotations

import json

import pytest

from tests.e2e_helpers import STAGES, generate_with_champion, run_factory, stage_statuses

TOKEN = "sd3-e2e-token-0123456789"  # the server wants 16 characters or more

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(3600)]  # a bound for a hung run, not a speed test: whole runs take 5x longer on a loaded machine


@pytest.fixture(scope="module")
def sd3_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return run_factory(tmp_path_factory.mktemp("e2e-sd3"), "tiny-sd3")


def test_a_tiny_sd3_run_reaches_deploy(sd3_run: dict) -> None:
    state = sd3_run["state"]
    assert stage_statuses(state) == dict.fromkeys(STAGES, "done")
    assert state["config"]["models"]["base_family"] == "sd3"


def test_both_sd3_lora_files_load_with_every_module_and_the_evaluator_found_them_portable(sd3_run: dict) -> None:
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import load_file

    from lora_factory.catalog import EVAL_RESULT
    from lora_factory.models import load_pipeline
    from training.export_kohya import KOHYA_WEIGHT_NAME
    from training.families import family_for
    from training.lora import LORA_WEIGHT_NAME

    lora_dir = next(p.parent for p in sd3_run["run_dir"].rglob(LORA_WEIGHT_NAME))
    saved = {k.rsplit(".lora_", 1)[0] for k in load_file(str(lora_dir / LORA_WEIGHT_NAME))}
    assert any(k.startswith("lora_unet_joint_blocks_0_x_block_attn_qkv") for k in
               load_file(str(lora_dir / KOHYA_WEIGHT_NAME)))
    for name in (LORA_WEIGHT_NAME, KOHYA_WEIGHT_NAME):
        pipe = load_pipeline("tiny:sd3", None, sd3_run["home"] / "models")
        if name == LORA_WEIGHT_NAME:
            pipe.load_lora_weights(str(lora_dir), weight_name=name)
        else:
            family_for("sd3").load_kohya(pipe, lora_dir / name)
        adapter = pipe.get_active_adapters()[0]
        loaded = {f"transformer.{k.rsplit('.lora_', 1)[0]}"
                  for k in get_peft_model_state_dict(pipe.transformer, adapter_name=adapter)}
        assert loaded == saved, name  # no missing modules
    ev = json.loads(next(sd3_run["run_dir"].rglob(EVAL_RESULT.path)).read_text())
    assert ev["portability"]["passed"] and KOHYA_WEIGHT_NAME in ev["portability"]["files"], ev["portability"]


def test_the_serving_api_generates_with_the_sd3_champion(sd3_run: dict) -> None:
    image = generate_with_champion(sd3_run["home"], TOKEN, "sd3-e2e")
    assert image.ndim == 3 and image.std() > 0
