"""Data-parallel training: two CPU processes (torchrun, gloo) train one adapter together."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.training_helpers import small_cfg, tiny_job, write_dataset
from training.launch import SPEC_FILE, run_multiprocess
from training.lora import LORA_WEIGHT_NAME
from training.trainer import train_lora


@pytest.mark.timeout(600)
def test_two_processes_train_one_adapter_with_averaged_gradients(model_cache: Path, tmp_path: Path) -> None:
    dataset = write_dataset(tmp_path / "ds", [(64, 64), (80, 64), (64, 80), (96, 96)])
    cfg = small_cfg(max_steps=4, batch_size=1, learning_rate=1e-2, num_processes=2, checkpoint_every=2,
                    sample_every=2, sample_steps=2, sample_prompts=["lfstyle a"])
    job = tiny_job(dataset, cfg, tmp_path / "lora", model_cache, checkpoint_dir=tmp_path / "ckpt",
                   feature_cache_dir=tmp_path / "fc", samples_dir=tmp_path / "samples")
    steps: list[int] = []
    grids: list[int] = []
    result = run_multiprocess(job, tmp_path / "work", on_step=lambda s, _m: steps.append(s),
                              on_sample=lambda s, _p: grids.append(s))
    assert result.steps == 4
    assert steps == [1, 2, 3, 4]  # rank 0 alone reports, each step once
    assert grids == [2, 4]
    args = json.loads((tmp_path / "lora" / "training_args.json").read_text())
    assert args["world_size"] == 2
    two = load_file(str(tmp_path / "lora" / LORA_WEIGHT_NAME))

    # A single process with the same seed sees only rank 0's batches: a different adapter.
    single = cfg.model_copy(update={"num_processes": 1, "sample_every": 0})
    train_lora(tiny_job(dataset, single, tmp_path / "one", model_cache))
    one = load_file(str(tmp_path / "one" / LORA_WEIGHT_NAME))
    assert two.keys() == one.keys()
    assert not all(torch.equal(two[k], one[k]) for k in two)
    assert all(torch.isfinite(v).all() for v in two.values())


def test_a_failing_multiprocess_run_is_a_one_line_error(model_cache: Path, tmp_path: Path) -> None:
    from lora_factory.errors import StageError

    job = tiny_job(tmp_path / "missing", small_cfg(max_steps=1, num_processes=2), tmp_path / "lora", model_cache)
    with pytest.raises(StageError, match="does not exist") as info:
        run_multiprocess(job, tmp_path / "work")
    assert "\n" not in str(info.value)


@pytest.mark.timeout(600)
def test_accelerate_launch_runs_the_same_entry(model_cache: Path, tmp_path: Path) -> None:
    """``accelerate launch --multi_gpu`` sets the same environment as torchrun; with no GPU
    visible its processes fall back to gloo on the CPU."""
    import os
    import subprocess
    import sys

    dataset = write_dataset(tmp_path / "ds", [(64, 64), (80, 64), (64, 80), (96, 96)])
    (tmp_path / "work").mkdir()
    spec = tiny_job(dataset, small_cfg(max_steps=2, batch_size=1, num_processes=2), tmp_path / "lora",
                    model_cache).write(tmp_path / "work" / SPEC_FILE)
    accelerate = Path(sys.executable).with_name("accelerate")
    done = subprocess.run(
        [str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
         "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "training.launch", str(spec)],
        env={**os.environ, "CUDA_VISIBLE_DEVICES": ""}, capture_output=True, text=True, timeout=500)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((tmp_path / "lora" / "training_args.json").read_text())["world_size"] == 2
    assert json.loads((tmp_path / "work" / "result.json").read_text())["steps"] == 2


def test_a_job_spec_round_trips_and_a_bad_one_is_a_one_line_error(tmp_path: Path) -> None:
    from lora_factory.errors import StageError
    from training.job import TrainJob

    job = tiny_job(tmp_path / "ds", small_cfg(num_processes=2, sample_prompts=["a"]), tmp_path / "lora",
                   tmp_path / "models", seed=7, checkpoint_dir=tmp_path / "ckpt",
                   card={"trigger_word": "lfstyle"})
    path = job.write(tmp_path / SPEC_FILE)
    assert TrainJob.read(path) == job
    spec = json.loads(path.read_text())
    spec["train"]["rnak"] = 4
    path.write_text(json.dumps(spec))
    with pytest.raises(StageError, match=r"train\.rnak") as info:
        TrainJob.read(path)
    assert "\n" not in str(info.value)
