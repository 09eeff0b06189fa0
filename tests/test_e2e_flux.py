"""The whole factory with ``--profile tiny-flux`` (issue 17), crawl to serve, on the smallest crawl
that trains: every stage done, the Flux LoRA files load through ``load_lora_weights``, and the
serving API generates with the run's adapter as the concept's champion."""

from __future__ import annotations

import pytest

from tests.e2e_helpers import STAGES, generate_with_champion, run_factory, stage_statuses

TOKEN = "flux-e2e-token-0123456789"  # the server wants 16 characters or more

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(3600)]  # a bound for a hung run, not a speed test: whole runs take 5x longer on a loaded machine


@pytest.fixture(scope="module")
def flux_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return run_factory(tmp_path_factory.mktemp("e2e-flux"), "tiny-flux")


def test_a_tiny_flux_run_reaches_deploy(flux_run: dict) -> None:
    state = flux_run["state"]
    assert stage_statuses(state) == dict.fromkeys(STAGES, "done")
    assert state["config"]["models"]["base_family"] == "flux"


def test_the_flux_lora_files_load_in_diffusers(flux_run: dict) -> None:
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import load_file

    from lora_factory.models import load_pipeline
    from training.export_kohya import KOHYA_WEIGHT_NAME
    from training.lora import LORA_WEIGHT_NAME

    lora_dir = next(p.parent for p in flux_run["run_dir"].rglob(LORA_WEIGHT_NAME))
    saved = set(load_file(str(lora_dir / LORA_WEIGHT_NAME)))
    for name in (LORA_WEIGHT_NAME, KOHYA_WEIGHT_NAME):
        assert (lora_dir / name).is_file(), name
    pipe = load_pipeline("tiny:flux", None, flux_run["home"] / "models")
    pipe.load_lora_weights(str(lora_dir), weight_name=LORA_WEIGHT_NAME, adapter_name="x")
    loaded = {f"transformer.{k}" for k in get_peft_model_state_dict(pipe.transformer, adapter_name="x")}
    assert loaded == saved  # no missing keys


def test_the_serving_api_generates_with_the_flux_champion(flux_run: dict) -> None:
    image = generate_with_champion(flux_run["home"], TOKEN, "flux-e2e")
    assert image.ndim == 3 and image.std() > 0
