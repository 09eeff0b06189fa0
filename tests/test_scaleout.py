"""Scale-out on Dask (``runtime.executor: dask``): curate's decode/hash/embed and label's captions
and re-ranking embeddings run in batches on a local cluster of 2 worker processes (loopback),
and write the same bytes as the in-process run. A few demo-site images of every planted kind
(one corrupt file included) and batches of 4, so several batches land on each worker."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from lora_factory.config import RuntimeConfig
from lora_factory.profiles import load_config
from lora_factory.scaleout import close_runners, dask_map, mapper_for
from spiders.sources.demo_site import generate_demo_site
from tasks.curate import curate_items
from tasks.curate.stage import write_outputs as write_curate
from tasks.curate.task import load_models as curate_models
from tasks.label import label_items
from tasks.label.task import load_models as label_models

from .curate_demo_items import demo_items

PER_KIND = 2
# The workers use as many torch threads as this process, so even the floats' last bits agree.
DASK = RuntimeConfig(executor="dask", dask_workers=2, batch_items=4, dask_torch_threads=torch.get_num_threads())


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory, model_cache: Path) -> dict:
    """A few items per planted kind, the tiny profile with batches of 4, and a started cluster."""
    tmp = tmp_path_factory.mktemp("scaleout")
    site = generate_demo_site(tmp / "site", seed=0)
    items, truth = demo_items(site, tmp / "crawl")
    taken: dict[str, int] = {}
    subset = []
    for it in items:
        kind = truth[it["item_id"]]["kind"]
        if taken.get(kind, 0) < PER_KIND:
            taken[kind] = taken.get(kind, 0) + 1
            subset.append(it)
    cfg = load_config("tiny", {"curate.clip_batch_size": 4, "label.captioner_batch_size": 4,
                               "label.tagger": "keywords", "home": str(tmp / "home")}, environ={})
    yield {"items": subset, "crawl": tmp / "crawl", "cfg": cfg, "cache": model_cache, "tmp": tmp}
    close_runners()


@pytest.fixture(scope="module")
def curated(demo: dict) -> dict:
    """Curate in process and on the cluster, each written to its own folder."""
    cfg, results = demo["cfg"], {}
    for name, runtime in (("local", RuntimeConfig()), ("dask", DASK)):
        models = curate_models(cfg.models, demo["cache"], runtime)
        result = curate_items(demo["items"], demo["crawl"], cfg.curate, models, seed=cfg.seed)
        out = demo["tmp"] / f"curate-{name}"
        out.mkdir()
        write_curate(result, demo["items"], demo["crawl"], out, cfg.curate)
        results[name] = {"result": result, "out": out}
    return results


def test_curate_on_dask_writes_the_same_bytes(curated: dict) -> None:
    local, dask = curated["local"], curated["dask"]
    assert mapper_for(DASK) is not None and mapper_for(RuntimeConfig()) is None
    assert local["result"].dropped and local["result"].kept  # both branches of the stage ran
    assert any(d["reason"] == "corrupt" for d in local["result"].dropped)
    files = _files(local["out"])
    assert any(name.endswith(".npy") for name in files) and "dataset.parquet" in files
    assert _files(dask["out"]) == files


def test_label_on_dask_gives_the_same_labels(demo: dict, curated: dict) -> None:
    cfg, kept = demo["cfg"], curated["local"]["result"].kept
    runs = {}
    for name, runtime in (("local", RuntimeConfig()), ("dask", DASK)):
        models = label_models(cfg.model_copy(update={"runtime": runtime}))
        runs[name] = label_items(kept, demo["crawl"], cfg.label, models, ["lighthouse"])
    local, dask = runs["local"], runs["dask"]
    assert any(c["source"] == "captioner" for lb in local.labels for c in lb["candidates"])
    assert all(c["score"] is not None for lb in local.labels for c in lb["candidates"])  # re-ranked
    assert dask.labels == local.labels
    assert dask.decisions == local.decisions


def _worker_threads(_: int) -> tuple[int, str | None]:
    """A batch function: the worker's torch threads while it runs, and its OMP_NUM_THREADS."""
    return torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")


@pytest.fixture(scope="module")
def one_worker() -> RuntimeConfig:
    """A local cluster of 1 worker process on loopback (closed with the module)."""
    yield RuntimeConfig(executor="dask", dask_workers=1)
    close_runners()


def test_dask_workers_use_the_flow_process_torch_threads(one_worker: RuntimeConfig) -> None:
    """Unset, ``dask_torch_threads`` means this process's count (3 here, not the nanny's 1); set,
    it is that number."""
    before = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        unset = dask_map(one_worker)(_worker_threads, [0, 1])
    finally:
        torch.set_num_threads(before)
    assert unset == [(3, "1"), (3, "1")]  # the worker started with OMP_NUM_THREADS=1, the batch ran on 3
    pinned = one_worker.model_copy(update={"dask_torch_threads": 2})
    assert dask_map(pinned)(_worker_threads, [0]) == [(2, "1")]
