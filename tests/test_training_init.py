"""``train.init_lora``: a retrain continues from the champion's LoRA instead of from zero."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lora_factory.errors import StageError
from training.families import family_for
from training.lora import save_lora
from training.setup import add_trainable_loras
from training.trainer import train_lora

from .serve_helpers import random_lora
from .training_helpers import lora_tensors, small_cfg, tiny_job, write_dataset


@pytest.fixture(scope="module")
def champion(tmp_path_factory: pytest.TempPathFactory, model_cache: Path) -> Path:
    """A rank-4 tiny:sd LoRA with random non-zero weights, as the trainer saves them."""
    return random_lora(model_cache, tmp_path_factory.mktemp("champion"), seed=5)


def test_step_zero_weights_are_the_champions(champion: Path, model_cache: Path, tmp_path: Path) -> None:
    from lora_factory.models import load_pipeline

    pipe = load_pipeline("tiny:sd", "sd15", model_cache)
    named = add_trainable_loras(pipe, small_cfg(init_lora=str(champion)), 0, family_for("sd15"))
    assert all(p.requires_grad and p.dtype == torch.float32 for p in named.values())
    saved = lora_tensors(save_lora(pipe, tmp_path).parent)  # the weights the loop starts from
    want = lora_tensors(champion.parent)
    assert saved.keys() == want.keys() and all(torch.equal(saved[k], want[k]) for k in want)
    assert any(k.endswith("lora_B.weight") and want[k].abs().sum() > 0 for k in want)  # not a zero adapter


def test_a_run_continues_from_the_champion(champion: Path, model_cache: Path, tmp_path: Path) -> None:
    data = write_dataset(tmp_path / "ds", [(64, 64), (64, 64)])
    job = tiny_job(data, small_cfg(max_steps=1, batch_size=2, learning_rate=1e-4, init_lora=str(champion.parent)),
                   tmp_path / "out", model_cache)
    trained = lora_tensors(train_lora(job).lora_dir)
    want = lora_tensors(champion.parent)
    ups = [k for k in want if k.endswith("lora_B.weight")]
    # one small step away from the champion (a fresh adapter's up weights would be ~zero)
    assert max((trained[k] - want[k]).abs().max().item() for k in want) < 0.01
    assert min(trained[k].abs().max().item() for k in ups) > 0.1


def test_a_rank_mismatch_is_one_clear_line(champion: Path, model_cache: Path) -> None:
    from lora_factory.models import load_pipeline

    pipe = load_pipeline("tiny:sd", "sd15", model_cache)
    with pytest.raises(StageError, match=r"set train.rank to the file's rank"):
        add_trainable_loras(pipe, small_cfg(rank=8, init_lora=str(champion)), 0, family_for("sd15"))


def test_retrain_from_champion_pins_the_champions_adapter(champion: Path, tmp_path: Path) -> None:
    from deploy.serving.champion import NoChampionError
    from deploy.serving.retrain_plan import champion_overrides
    from lora_factory.profiles import load_config

    from .serve_helpers import register_champion

    cfg = load_config("tiny", {"home": str(tmp_path / "home"), "retrain.from_champion": True}, environ={})
    with pytest.raises(NoChampionError):
        champion_overrides(cfg, "boat", tmp_path / "dl")
    register_champion(cfg.tracking.uri, tmp_path / "artifacts", "boat", champion)
    extra = champion_overrides(cfg, "boat", tmp_path / "dl")
    assert Path(extra["train.init_lora"]).read_bytes() == champion.read_bytes()  # the registered file
    assert (extra["train.rank"], extra["train.alpha"], extra["train.train_text_encoder"]) == (4, 4.0, False)
    run_cfg = load_config("tiny", extra, environ={})
    assert {"rank", "alpha", "target_modules", "init_lora"} <= set(run_cfg.tune.pin)  # the tuner keeps them
    assert sorted(run_cfg.train.target_modules or []) == sorted(family_for("sd15").default_targets)
