"""Evaluation on Dask (``runtime.executor: dask``): rendering and image scoring in batches on a
local cluster of 2 worker processes write the same eval.json, images, grid and report as the
in-process run; each worker loads the pipeline with the LoRA once, and the scheduler check
stops the stage on a worker too. 3 prompts x 6 seeds: one batch per side (a batch is a multiple
of the scorers' 32 images), so base and LoRA render at once on the two workers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lora_factory.config import EvaluateConfig, RuntimeConfig
from lora_factory.errors import StageError
from lora_factory.scaleout import close_runners, dask_runner, mapper_for
from tasks.evaluate import EvalSetup, evaluate_lora
from tasks.evaluate.batches import EvalBatches, pipeline_spec, worker_state
from tasks.evaluate.prompts import EvalPrompt
from tasks.evaluate.stage import training_losses
from training.export_kohya import KOHYA_WEIGHT_NAME
from training.lora import LORA_WEIGHT_NAME

from .training_helpers import write_dataset

PROMPTS = [EvalPrompt("concept", "lfstyle, a yellow ellipse"),
           EvalPrompt("generalisation", "lfstyle, a yellow ellipse as a watercolour painting"),
           EvalPrompt("leakage", "a yellow ellipse")]
CFG = EvaluateConfig(num_inference_steps=2, guidance_scale=5.0, num_seeds=6, batch_size=4, efficiency_images=0,
                     embeddings=["pixels", "clip", "dino"])
DASK = RuntimeConfig(executor="dask", dask_workers=2, batch_items=4, dask_torch_threads=torch.get_num_threads())
REFS = {"clip": "tiny:clip", "dino": "tiny:dinov2"}

pytestmark = pytest.mark.timeout(2400)  # worker processes import torch and diffusers: slow on a loaded machine


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _remote() -> EvalBatches:
    mapper = mapper_for(DASK)
    assert mapper is not None
    return EvalBatches(mapper, DASK.batch_items, tuple(CFG.embeddings), REFS)


@pytest.fixture(scope="module")
def setup(tiny_lora: Path, model_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> EvalSetup:
    refs = write_dataset(tmp_path_factory.mktemp("refs"), [(64, 64), (72, 64)])
    return EvalSetup("tiny:sd", "sd15", "tiny:clip", model_cache, 64, "lfstyle", sorted(refs.glob("*.png")),
                     training_losses(tiny_lora), tiny_lora / KOHYA_WEIGHT_NAME, scorer_refs={"dino": "tiny:dinov2"})


@pytest.fixture(scope="module")
def evaluated(setup: EvalSetup, tiny_lora: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The same evaluation in process and on the cluster, each written to its own folder."""
    runs = {}
    for name, remote in (("local", None), ("dask", _remote())):
        out = tmp_path_factory.mktemp(f"eval-{name}")
        runs[name] = {"result": evaluate_lora(tiny_lora / LORA_WEIGHT_NAME, PROMPTS, CFG, setup, out, remote),
                      "out": out}
    runs["workers"] = dask_runner(DASK).client.run(worker_state)
    yield runs
    close_runners()


def test_evaluate_on_dask_writes_the_same_files(evaluated: dict) -> None:
    local, dask = evaluated["local"], evaluated["dask"]
    base = [s for s in local["result"].samples if s["side"] == "base"]
    lora = [s for s in local["result"].samples if s["side"] == "lora"]
    assert len(base) == len(lora) == len(PROMPTS) * CFG.num_seeds
    # The adapter changes the images, so a base rendered with it (or a LoRA without it) would show.
    assert any(b["pixels_fidelity"] != l_["pixels_fidelity"] for b, l_ in zip(base, lora, strict=True))
    assert local["result"].portability["passed"]
    files = _files(local["out"])
    assert "eval.json" in files and "grid.png" in files and sum(n.endswith(".png") for n in files) > 2 * len(base)
    assert _files(dask["out"]) == files
    assert dask["result"].model_dump() == local["result"].model_dump()


def test_each_worker_loads_the_lora_pipeline_once(evaluated: dict, tiny_lora: Path) -> None:
    states = list(evaluated["workers"].values())
    digest = pipeline_spec("tiny:sd", "sd15", Path("."), tiny_lora / LORA_WEIGHT_NAME, {}).lora_digest
    busy = [s for s in states if s["loads"]]
    assert busy and all(s["loras"] == [digest] and s["loads"] == 1 for s in busy)


def test_a_worker_whose_scheduler_differs_stops_the_stage(evaluated: dict, tiny_lora: Path, model_cache: Path
                                                          ) -> None:
    scheduler = evaluated["local"]["result"].scheduler
    changed = {**scheduler, "config": {**scheduler["config"], "num_train_timesteps": 7}}
    spec = pipeline_spec("tiny:sd", "sd15", model_cache, tiny_lora / LORA_WEIGHT_NAME, changed)
    kw = {"steps": 1, "guidance": 1.0, "resolution": 64, "batch_size": 1}
    with pytest.raises(StageError, match="another scheduler than the flow's"):
        _remote().render(spec, PROMPTS[:1], [1], kw)
