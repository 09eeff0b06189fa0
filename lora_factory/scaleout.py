"""Where the heavy per-item batches of curate, label and evaluate run: in this process, or on a
Dask cluster through prefect-dask's ``DaskTaskRunner`` (``runtime.executor``).

Why this shape: a stage cuts its items into batches of paths and ids and hands a plain,
module-level function and the batches to ``map_batches``; nothing heavy crosses the boundary.
Each worker process loads a model once (``cached_model``) and keeps it for every later batch.
Results come back in the batches' order, so a stage's outputs do not depend on where (or in
which order) its batches ran. The cluster is made once per process and reused by every stage:
an existing scheduler (``runtime.dask_address``) or a local cluster of ``runtime.dask_workers``
processes on loopback.
"""

from __future__ import annotations

import atexit
import contextlib
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from lora_factory.config import RuntimeConfig

B = TypeVar("B")
R = TypeVar("R")
Mapper = Callable[[Callable[[Any], Any], Sequence[Any]], list[Any]]

_runners: dict[tuple[Any, ...], Any] = {}
_runners_lock = threading.Lock()
_models: dict[tuple[Any, ...], Any] = {}
_models_lock = threading.Lock()


def local_map(fn: Callable[[B], R], batches: Sequence[B]) -> list[R]:
    """Every batch in this process, in order."""
    return [fn(b) for b in batches]


def _runner_key(cfg: RuntimeConfig) -> tuple[Any, ...]:
    return (cfg.dask_address, cfg.dask_workers, cfg.dask_threads_per_worker)


def dask_runner(cfg: RuntimeConfig) -> Any:
    """This process's started ``DaskTaskRunner`` for ``cfg`` (made on first use, closed at exit)."""
    from prefect_dask import DaskTaskRunner

    key = _runner_key(cfg)
    with _runners_lock:
        runner = _runners.get(key)
        if runner is None:
            if cfg.dask_address:
                runner = DaskTaskRunner(address=cfg.dask_address)
            else:
                runner = DaskTaskRunner(cluster_kwargs={
                    "n_workers": cfg.dask_workers, "threads_per_worker": cfg.dask_threads_per_worker,
                    "processes": True, "host": "127.0.0.1", "dashboard_address": None})
            runner.__enter__()
            _runners[key] = runner
    return runner


@atexit.register
def close_runners() -> None:
    """Stop the local clusters this process made (a remote scheduler is only disconnected)."""
    with _runners_lock:
        for runner in _runners.values():
            runner.__exit__(None, None, None)
        _runners.clear()


def worker_torch_threads(cfg: RuntimeConfig) -> int:
    """The torch threads each batch runs with on a worker: ``runtime.dask_torch_threads``, or
    unset, this process's own count. Why: Dask's nanny starts workers with ``OMP_NUM_THREADS=1``,
    so torch there would run single-threaded (slower, and floats off in their last bits)."""
    if cfg.dask_torch_threads is not None:
        return cfg.dask_torch_threads
    import torch

    return torch.get_num_threads()


def run_batch(fn: Callable[[B], R], batch: B, torch_threads: int) -> R:
    """On a worker: ``fn(batch)`` with torch's intra-op threads pinned to ``torch_threads`` (their
    count changes the order of float sums, so the last bits of an embedding)."""
    import torch

    if torch.get_num_threads() != torch_threads:
        torch.set_num_threads(torch_threads)
    return fn(batch)


def in_prefect_run() -> bool:
    """Whether this code runs inside a Prefect flow or task run (whose UI can show the batches)."""
    from prefect.context import FlowRunContext, TaskRunContext

    return FlowRunContext.get() is not None or TaskRunContext.get() is not None


def api_for_workers() -> Any:
    """Settings that name this process's Prefect API to the workers (they come with each task
    run's context). Why: a flow on Prefect's temporary server has no ``PREFECT_API_URL``, and each
    worker would start a temporary server of its own instead of reporting to the flow's."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    if PREFECT_API_URL.value():
        return contextlib.nullcontext()
    with get_client(sync_client=True) as client:
        url = str(client.api_url)
    return temporary_settings(updates={PREFECT_API_URL: url})


def batch_task(fn: Callable[..., Any], index: int, total: int) -> Any:
    """``run_batch`` as a Prefect task named after the batch function: each batch is a task run
    (``measure_batch [2/5]``) nested under its stage's, with no Prefect cache or stored result."""
    from prefect import task
    from prefect.cache_policies import NO_CACHE

    return task(run_batch, name=fn.__name__, task_run_name=f"{fn.__name__} [{index + 1}/{total}]",
                cache_policy=NO_CACHE, persist_result=False)


def dask_map(cfg: RuntimeConfig) -> Mapper:
    """A mapper that runs each batch on the cluster and returns the results in batch order.
    Inside a flow run each batch is a Prefect task run submitted through the ``DaskTaskRunner``
    (it shows in the Prefect UI); outside one (a library call, a unit test) a plain Dask future."""

    def run(fn: Callable[[B], R], batches: Sequence[B]) -> list[R]:
        if not batches:
            return []
        runner = dask_runner(cfg)
        threads = worker_torch_threads(cfg)
        if in_prefect_run():
            params = [{"fn": fn, "batch": b, "torch_threads": threads} for b in batches]
            with api_for_workers():
                runs = [runner.submit(batch_task(fn, i, len(batches)), p) for i, p in enumerate(params)]
            return [r.result() for r in runs]
        client = runner.client
        futures = [client.submit(run_batch, fn, b, threads, pure=False) for b in batches]
        return client.gather(futures)

    return run


def mapper_for(cfg: RuntimeConfig) -> Mapper | None:
    """The mapper ``runtime.executor`` asks for; ``None`` for ``local`` (the stages' own
    in-process path, unchanged)."""
    return dask_map(cfg) if cfg.executor == "dask" else None


def chunks(n: int, size: int) -> list[range]:
    """``range(n)`` cut into consecutive ranges of ``size`` (the last one shorter)."""
    size = max(1, size)
    return [range(s, min(n, s + size)) for s in range(0, n, size)]


def aligned_size(wanted: int, inner: int) -> int:
    """A batch size that is a multiple of a model's own ``inner`` batch size, so each model
    call sees exactly the images it sees in process (bit-identical outputs)."""
    inner = max(1, inner)
    return max(1, wanted // inner) * inner


def cached_model(loader: Callable[..., Any], ref: str, cache_dir: str | Path) -> Any:
    """``loader(ref, Path(cache_dir))`` once per process: a worker keeps the models it loaded."""
    key = (loader.__module__, loader.__qualname__, ref, str(cache_dir))
    with _models_lock:
        if key not in _models:
            _models[key] = loader(ref, Path(cache_dir))
        return _models[key]
