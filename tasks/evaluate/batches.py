"""Evaluation's per-image work as plain, picklable batch functions for ``lora_factory.scaleout``:
a batch renders a run of (prompt, seed) jobs on one side (base or LoRA) and embeds its images.

Why this shape: a worker loads the base pipeline with the LoRA once and keeps it (keyed on the
model reference and the LoRA file's digest: a new LoRA replaces it, so a long-lived worker holds
one pipeline); base images are rendered with the adapter disabled, which runs the base layers
alone, as the in-process base render does. The scheduler check holds there too: the worker's
pipeline must have the flow's scheduler, and loading the LoRA must not change it. A batch starts
at a multiple of both the pipeline's and the scorers' batch sizes, so every model call sees the
images it sees in process and the numbers are the same.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lora_factory.errors import StageError
from lora_factory.scaleout import Mapper, aligned_size, chunks
from lora_factory.stage_keys import path_digest

from .generate import Job, Sample, jobs_of, render_jobs, scheduler_of
from .prompts import EvalPrompt

EMBED_BATCH = 32  # images per scorer call: ClipScorer's and DinoScorer's embed_images default

_pipeline: dict[tuple[Any, ...], Any] = {}  # one slot: the last (base, LoRA) this process loaded
_embedders: dict[tuple[Any, ...], Any] = {}
_lock = threading.Lock()  # one batch at a time per process: a pipeline is not thread-safe
_loads = [0]  # pipelines this process has loaded (worker_state)


@dataclass(frozen=True)
class PipelineSpec:
    """The pipeline a worker needs: the base model, the LoRA (by digest) and the flow's scheduler."""

    base_ref: str
    family: str
    cache_dir: str
    lora_file: str
    lora_digest: str
    scheduler: dict[str, Any]  # the flow's base pipeline's (generate.scheduler_of)


@dataclass(frozen=True)
class RenderBatch:
    pipeline: PipelineSpec
    side: str  # "base" or "lora"
    jobs: list[Job]
    steps: int
    guidance: float
    resolution: int
    batch_size: int
    embeddings: tuple[str, ...]  # evaluate.embeddings
    scorer_refs: tuple[tuple[str, str], ...]  # embedding -> model ref (clip, dino)


@dataclass
class BatchResult:
    samples: list[Sample]
    embedded: dict[str, np.ndarray]  # embedding name -> one row per sample


def _load_pipeline(spec: PipelineSpec, device: str) -> Any:
    """The base pipeline with the LoRA loaded; stops where the in-process stage would."""
    from lora_factory.models import load_pipeline

    _loads[0] += 1
    pipe = load_pipeline(spec.base_ref, spec.family, Path(spec.cache_dir), device=device)
    pipe.set_progress_bar_config(disable=True)
    before = scheduler_of(pipe)
    lora = Path(spec.lora_file)
    pipe.load_lora_weights(str(lora.parent), weight_name=lora.name)
    if scheduler_of(pipe) != before:
        raise StageError("loading the LoRA changed the pipeline's scheduler; base and LoRA would not compare")
    return pipe


def _pipeline_for(spec: PipelineSpec, device: str) -> Any:
    key = (spec.base_ref, spec.family, spec.cache_dir, spec.lora_digest, device)
    if key not in _pipeline:
        _pipeline.clear()
        _pipeline[key] = _load_pipeline(spec, device)
    return _pipeline[key]


def worker_state() -> dict[str, Any]:
    """What this process holds: the LoRA digests of its pipeline and how many it has loaded."""
    with _lock:
        return {"loras": [key[3] for key in _pipeline], "loads": _loads[0]}


def _embedder(name: str, refs: dict[str, str], cache_dir: str) -> Any:
    from .embedders import load_embedder

    key = (name, refs.get(name, ""), cache_dir)
    if key not in _embedders:
        _embedders[key] = load_embedder(name, refs.get("clip", ""), Path(cache_dir), refs=refs)
    return _embedders[key]


def render_batch(batch: RenderBatch) -> BatchResult:
    """On a worker: render the batch's jobs on its side, then embed the images."""
    from training.trainer import resolve_device

    device = resolve_device("auto")
    refs = dict(batch.scorer_refs)
    with _lock:
        pipe = _pipeline_for(batch.pipeline, str(device))
        if scheduler_of(pipe) != batch.pipeline.scheduler:
            raise StageError(f"a Dask worker's {batch.pipeline.base_ref} has another scheduler than the flow's; "
                             "every worker must see the same model cache as the flow")
        if batch.side == "base":
            pipe.disable_lora()
        else:
            pipe.enable_lora()
        samples = render_jobs(pipe, batch.jobs, batch.side, steps=batch.steps, guidance=batch.guidance,
                              resolution=batch.resolution, batch_size=batch.batch_size, device=device)
        pipe.enable_lora()
        images = [s.image for s in samples]
        embedded = {n: _embedder(n, refs, batch.pipeline.cache_dir).embed_images(images) for n in batch.embeddings}
    return BatchResult(samples, embedded)


@dataclass
class EvalBatches:
    """Where evaluate's render-and-embed batches go (``runtime.executor: dask``)."""

    map_batches: Mapper
    batch_items: int
    embeddings: tuple[str, ...]
    scorer_refs: dict[str, str]  # clip: models.clip_scorer, dino: models.dino_scorer

    def render(self, spec: PipelineSpec, prompts: list[EvalPrompt], seeds: list[int], kw: dict[str, Any]
               ) -> tuple[dict[str, list[Sample]], dict[str, dict[str, np.ndarray]]]:
        """Both sides' samples in (prompt, seed) order, and side -> embedding -> rows."""
        jobs = jobs_of(prompts, seeds)
        size = aligned_size(self.batch_items, math.lcm(kw["batch_size"], EMBED_BATCH))
        specs = [RenderBatch(spec, side, [jobs[i] for i in r], kw["steps"], kw["guidance"], kw["resolution"],
                             kw["batch_size"], self.embeddings, tuple(sorted(self.scorer_refs.items())))
                 for side in ("base", "lora") for r in chunks(len(jobs), size)]
        parts: list[BatchResult] = self.map_batches(render_batch, specs)
        samples: dict[str, list[Sample]] = {"base": [], "lora": []}
        rows: dict[str, dict[str, list[np.ndarray]]] = {"base": {}, "lora": {}}
        for s, part in zip(specs, parts, strict=True):
            samples[s.side] += part.samples
            for name, emb in part.embedded.items():
                rows[s.side].setdefault(name, []).append(emb)
        return samples, {side: {n: np.concatenate(r) for n, r in by.items()} for side, by in rows.items()}


def pipeline_spec(base_ref: str, family: str, cache_dir: Path, lora_file: Path, scheduler: dict[str, Any]
                  ) -> PipelineSpec:
    return PipelineSpec(base_ref, family, str(cache_dir), str(lora_file), path_digest(lora_file), scheduler)
