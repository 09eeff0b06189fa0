from __future__ import annotations

from pathlib import Path

import pytest

from lora_factory.errors import ConfigError
from lora_factory.profiles import available_profiles, load_config, parse_set_args


def test_profiles_load_and_differ() -> None:
    assert {"tiny", "sd15", "sdxl"} <= set(available_profiles())
    tiny, sd15, sdxl = (load_config(p, environ={}) for p in ("tiny", "sd15", "sdxl"))
    assert tiny.models.base == "tiny:sd" and tiny.crawl.source == "demo"
    assert sd15.models.base == "stable-diffusion-v1-5/stable-diffusion-v1-5"
    assert sdxl.models.base_family == "sdxl" and sdxl.train.resolution == 1024
    assert sd15.train.optimizer == "adamw8bit" and sd15.train.mixed_precision == "fp16"


def test_defaults_depend_on_home(tmp_path: Path) -> None:
    cfg = load_config("tiny", {"home": str(tmp_path)}, environ={})
    assert cfg.store.root == str(tmp_path)
    assert cfg.tracking.uri == f"sqlite:///{tmp_path}/mlflow.db"


def test_precedence_profile_env_cli() -> None:
    env = {"LORA_FACTORY_TRAIN__MAX_STEPS": "7", "LORA_FACTORY_TRAIN__RANK": "2"}
    cfg = load_config("tiny", {"train.rank": 3}, environ=env)
    assert cfg.train.max_steps == 7  # env beats profile (20)
    assert cfg.train.rank == 3  # CLI beats env
    lists = load_config("tiny", parse_set_args(["train.target_modules=[to_q, to_v]"]), environ={})
    assert lists.train.target_modules == ["to_q", "to_v"]


@pytest.mark.parametrize(
    ("overrides", "env", "expected"),
    [
        ({"train.lerning_rate": 1}, {}, "train.lerning_rate: unknown key (allowed: resolution, rank"),
        ({"train.mixed_precision": "fp8"}, {}, "train.mixed_precision: Input should be 'no', 'fp16' or 'bf16'"),
        ({}, {"LORA_FACTORY_CRAWL__MAX_PAGES": "lots"}, "crawl.max_pages: Input should be a valid integer"),
        ({"bogus": 1}, {}, "bogus: unknown key (allowed: profile, home, seed, models"),
        ({"train.rank.x": 1}, {}, "train.rank.x: 'rank' is a value, not a section"),
    ],
)
def test_bad_values_are_one_line_with_the_dotted_key(overrides, env, expected) -> None:
    with pytest.raises(ConfigError) as info:
        load_config("tiny", overrides, environ=env)
    message = str(info.value)
    assert expected in message
    assert "\n" not in message


def test_unknown_profile_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError, match="unknown profile 'nope': choose one of flux, sd15, sd3, sdxl, tiny, tiny-flux, tiny-sd3"):
        load_config("nope", environ={})


def test_profile_file_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="is not valid YAML"):
        load_config(str(bad), environ={})
    listy = tmp_path / "list.yaml"
    listy.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(str(listy), environ={})
    good = tmp_path / "mine.yaml"
    good.write_text("train:\n  rank: 8\n")
    assert load_config(str(good), environ={}).train.rank == 8


def test_the_default_llm_key_variable_is_a_secret_not_a_setting() -> None:
    # LORA_FACTORY_LLM_API_KEY (label.llm.api_key_env's default) shares the override prefix
    cfg = load_config("tiny", environ={"LORA_FACTORY_LLM_API_KEY": "sk-123", "LORA_FACTORY_SEED": "7"})
    assert cfg.seed == 7 and "sk-123" not in cfg.model_dump_json()
