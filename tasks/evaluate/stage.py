"""The evaluate stage logic: render base and LoRA on the same prompts, seeds and scheduler,
embed, score, look for silent failures, judge, and write ``eval.json``, ``grid.png``,
``report.html`` and the images. Plain functions of paths and config; ``task`` wraps them."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from lora_factory.catalog import EVAL_GRID, EVAL_IMAGES, EVAL_REPORT, EVAL_RESULT
from lora_factory.config import EvaluateConfig
from lora_factory.errors import StageError
from lora_factory.models.refs import is_random_ref
from lora_factory.schemas import EvalResult, Finding
from training.families import family_for

from . import findings as fnd
from .aesthetic import add_aesthetic, aesthetic_delta
from .batches import EvalBatches, pipeline_spec
from .efficiency import measure_base, measure_loaded
from .embedders import Embedder, load_embedder
from .generate import Sample, render, scheduler_of
from .grid import make_grid
from .portability import KeyReport, applied_modules, check_keys, max_difference, portability_record
from .prompts import EvalPrompt, seeds_for, strip_trigger
from .report import render_report
from .score import EmbeddingSet, Scored, fidelity_gains, headline_scores, per_prompt, score_set
from .verdict import judge

log = logging.getLogger(__name__)

STAGE = "evaluate"
TRAINING_ARGS = "training_args.json"
WORST_COPIES = 3


@dataclass
class EvalSetup:
    """What evaluating needs besides the LoRA file and the prompts."""

    base_ref: str
    family: str
    clip_ref: str
    cache_dir: Path
    resolution: int
    trigger: str
    references: list[Path] = field(default_factory=list)  # training images (fidelity, copies)
    losses: list[float] = field(default_factory=list)  # the training loss per step, if known
    kohya_file: Path | None = None  # the same LoRA in kohya format: checked for portability
    sample_grids: list[Path] = field(default_factory=list)  # the trainer's sample grids, oldest first
    scorer_refs: dict[str, str] = field(default_factory=dict)  # embedding -> model ref (dino: models.dino_scorer)
    best_checkpoint: dict[str, Any] | None = None  # evaluate.best_of_last's choice and scores (best.Choice)
    run_dir: Path | None = None  # the factory run's folder: eval.json's paths are relative to it


def run_relative(path: Path, setup: EvalSetup, out_dir: Path) -> str:
    """``path`` as eval.json stores it: relative to the run directory (a file of this stage's
    staging folder as ``evaluate/...``), absolute outside a factory run so it stays findable."""
    path = Path(path)
    if setup.run_dir is None:
        return str(path)
    for root, prefix in ((Path(out_dir), STAGE), (Path(setup.run_dir), "")):
        if path.is_relative_to(root):
            return "/".join(filter(None, (prefix, path.relative_to(root).as_posix())))
    return str(path)


@dataclass
class Rendered:
    base: list[Sample]
    lora: list[Sample]
    seeds: list[int]
    scheduler: dict[str, Any]
    portability: dict[str, Any] = field(default_factory=dict)
    efficiency: dict[str, Any] = field(default_factory=dict)
    embedded: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)  # side -> embedding -> rows (Dask)


def training_losses(lora_dir: Path) -> list[float]:
    """The trainer's loss per step from ``training_args.json`` next to the LoRA (if there)."""
    path = Path(lora_dir) / TRAINING_ARGS
    if not path.is_file():
        return []
    return [float(v) for v in json.loads(path.read_text()).get("losses", [])]


def open_pipeline(setup: EvalSetup, cfg: EvaluateConfig) -> tuple[Any, dict[str, Any]]:
    """The base pipeline and the ``render`` settings every image of the evaluation uses."""
    from lora_factory.models import load_pipeline
    from training.trainer import resolve_device

    device = resolve_device("auto")
    pipe = load_pipeline(setup.base_ref, setup.family, setup.cache_dir, device=str(device))
    pipe.set_progress_bar_config(disable=True)
    return pipe, {"steps": cfg.num_inference_steps, "guidance": cfg.guidance_scale, "resolution": setup.resolution,
                  "batch_size": cfg.batch_size, "device": device}


def render_both(setup: EvalSetup, lora_file: Path, prompts: list[EvalPrompt], cfg: EvaluateConfig,
                remote: EvalBatches | None = None) -> Rendered:
    """Base first, then the same pipeline (same scheduler object) with the LoRA loaded; with
    ``remote``, both sides render (and embed) in batches on Dask workers instead."""
    pipe, kw = open_pipeline(setup, cfg)
    seeds = seeds_for(cfg.seed, cfg.num_seeds)
    keys = check_keys(pipe, setup.family, lora_file)
    if not keys.fits:
        raise StageError(f"{lora_file.name} is not a LoRA for {setup.base_ref} ({setup.family}): {keys.line()}")
    scheduler = scheduler_of(pipe)
    samples, embedded = (remote.render(pipeline_spec(setup.base_ref, setup.family, setup.cache_dir, lora_file,
                                                     scheduler), prompts, seeds, kw) if remote else ({}, {}))
    base = samples["base"] if remote else render(pipe, prompts, seeds, "base", **kw)
    timing = (prompts[:cfg.efficiency_prompts], cfg.seed, cfg.efficiency_images, kw)
    base_time = measure_base(pipe, *timing) if cfg.efficiency_images else None
    pipe.load_lora_weights(str(lora_file.parent), weight_name=lora_file.name)
    keys.applied = applied_modules(pipe)
    if scheduler_of(pipe) != scheduler:
        raise StageError("loading the LoRA changed the pipeline's scheduler; base and LoRA would not compare")
    lora = samples["lora"] if remote else render(pipe, prompts, seeds, "lora", **kw)
    efficiency = measure_loaded(pipe, *timing, base=base_time) if base_time else {}
    portability = {}
    if setup.kohya_file is not None:
        portability = check_portability(pipe, setup, {lora_file.name: keys}, lora[0], prompts, kw)
    elif not keys.ok:  # the file loads with modules missing: not portable even without a kohya file
        portability = portability_record({lora_file.name: keys}, None)
    return Rendered(base, lora, seeds, scheduler, portability, efficiency, embedded)


def check_portability(pipe: Any, setup: EvalSetup, keys: dict[str, KeyReport], reference: Sample,
                      prompts: list[EvalPrompt], kw: dict[str, Any]) -> dict[str, Any]:
    """The kohya file in place of the diffusers one: its keys, then the same image for the first
    prompt and seed as the diffusers file gave."""
    kohya = Path(setup.kohya_file or "")
    pipe.unload_lora_weights()
    keys[kohya.name] = check_keys(pipe, setup.family, kohya)
    diff = None
    if keys[kohya.name].ok:
        try:
            family_for(setup.family).load_kohya(pipe, kohya)
            keys[kohya.name].applied = applied_modules(pipe)
        except AssertionError:  # diffusers' Flux converter assumes FLUX.1's widths (tiny:flux has others)
            log.warning("diffusers cannot read %s at this model's widths; its keys and shapes were checked, "
                        "its image was not", kohya.name)
            return portability_record(keys, None)
        again = render(pipe, [prompts[reference.prompt_index]], [reference.seed], "kohya", **{**kw, "batch_size": 1})
        diff = max_difference(again[0].pixels, reference.pixels)
    return portability_record(keys, diff)


def embed_all(embedders: list[Embedder], r: Rendered, prompts: list[EvalPrompt], setup: EvalSetup
              ) -> list[EmbeddingSet]:
    refs = [Image.open(p).convert("RGB") for p in setup.references]
    sets = []
    for e in embedders:
        text = None
        if e.embed_texts is not None:
            texts = [strip_trigger(prompts[s.prompt_index].text, setup.trigger) for s in r.base]
            text = e.embed_texts(texts)
        done = {side: r.embedded.get(side, {}).get(e.name) for side in ("base", "lora")}
        base, lora = (e.embed_images([s.image for s in samples]) if done[side] is None else done[side]
                      for side, samples in (("base", r.base), ("lora", r.lora)))
        sets.append(EmbeddingSet(e.name, base, lora,
                                 e.embed_images(refs) if refs else np.zeros((0, 1)), text))
    return sets


def silent_failures(r: Rendered, lora_file: Path, cfg: EvaluateConfig, losses: list[float],
                    references: list[Path]) -> tuple[list[Finding], float]:
    rms = fnd.weight_delta_rms(lora_file)
    found = fnd.image_findings(r.base, "base") + fnd.image_findings(r.lora, "LoRA", fnd.reference_pixels(references))
    found += fnd.zero_lora_finding(rms, cfg.min_weight_delta_rms)
    found += fnd.identical_finding(r.base, r.lora) + fnd.flat_loss_finding(losses)
    return found, rms


def worst_copies(scored: Scored, primary: str, r: Rendered, prompts: list[EvalPrompt],
                 setup: EvalSetup, out_dir: Path) -> list[dict[str, Any]]:
    """The LoRA images nearest to a training image (primary embedder), most similar first."""
    copy = scored.copies.get(primary)
    if copy is None:
        return []
    triggered = [s for s in r.lora if prompts[s.prompt_index].kind != "leakage"]
    order = np.argsort(-copy.similarity)[:WORST_COPIES]
    return [{"image": triggered[i].name, "prompt": prompts[triggered[i].prompt_index].text,
             "training_image": run_relative(setup.references[int(copy.nearest[i])], setup, out_dir),
             "similarity": float(copy.similarity[i]), "exact": int(i) in copy.exact} for i in order]


def evaluate_lora(lora_file: Path, prompts: list[EvalPrompt], cfg: EvaluateConfig, setup: EvalSetup,
                  out_dir: Path, remote: EvalBatches | None = None) -> EvalResult:
    """Evaluate ``lora_file`` against ``setup.base_ref`` and write the outputs to ``out_dir``."""
    if not prompts:
        raise StageError("evaluate has no prompts; set evaluate.prompts in the profile")
    lora_file = Path(lora_file)
    if not lora_file.is_file():
        raise StageError(f"no LoRA weights at {lora_file}; run the train stage")
    rendered = render_both(setup, lora_file, prompts, cfg, remote)
    embedders = [load_embedder(n, setup.clip_ref, setup.cache_dir, refs=setup.scorer_refs) for n in cfg.embeddings]
    scored = Scored()
    kinds = [prompts[s.prompt_index].kind for s in rendered.base]
    sets = embed_all(embedders, rendered, prompts, setup)
    for es in sets:
        score_set(es, kinds, cfg, scored)
    images = ([s.image for s in rendered.base], [s.image for s in rendered.lora])
    scorers = {e.name: e.ref for e in embedders} | add_aesthetic(scored, sets, cfg, images, setup.cache_dir)
    found, rms = silent_failures(rendered, lora_file, cfg, setup.losses, setup.references)
    if rendered.portability and not rendered.portability["passed"]:
        problems = [f"{n}: {f['problem']}" for n, f in rendered.portability["files"].items() if not f["ok"]]
        diff = rendered.portability["max_pixel_difference"]
        found.append(Finding(code="portability", severity="error", items=problems,
                             message="the diffusers and kohya files do not load alike: "
                                     + ("; ".join(problems) or f"images differ by up to {diff:.4f}")))
    primary = cfg.embeddings[0]
    copies = worst_copies(scored, primary, rendered, prompts, setup, out_dir)
    if any(c["exact"] for c in copies):
        found.append(Finding(code="exact_copy", severity="error", items=[c["image"] for c in copies if c["exact"]],
                             message=f"LoRA images reproduce a training image (cosine >= {cfg.exact_copy_threshold})"))
    result = judge(EvalResult(
        base_ref=setup.base_ref, family=setup.family, lora_path=run_relative(lora_file, setup, out_dir),
        scorers=scorers, random_scorers=[n for n, ref in scorers.items() if is_random_ref(ref)],
        metrics=scored.metrics, scores=headline_scores(scored, primary) | aesthetic_delta(scored),
        findings=found, verdict="fail",
        portability=rendered.portability, efficiency=rendered.efficiency,
        sample_progression=[run_relative(p, setup, out_dir) for p in setup.sample_grids], fidelity_gains=fidelity_gains(scored),
        primary_embedding=primary, prompts=[p.as_dict() for p in prompts], seeds=rendered.seeds,
        steps=cfg.num_inference_steps, guidance_scale=cfg.guidance_scale, resolution=setup.resolution,
        scheduler=rendered.scheduler, weight_delta_rms=rms, num_training_images=len(setup.references),
        final_loss=setup.losses[-1] if setup.losses else None,
        per_prompt=per_prompt(prompts, [s.prompt_index for s in rendered.base], scored),
        samples=_samples(rendered, scored), worst_copies=copies,
        **({"best_checkpoint": setup.best_checkpoint} if setup.best_checkpoint else {})), cfg)
    write_outputs(result, rendered, prompts, Path(out_dir), setup.run_dir)
    return result


def _samples(r: Rendered, scored: Scored) -> list[dict[str, Any]]:
    """Every image with its prompt, seed, side and per-image metrics."""
    rows = []
    for side, samples in (("base", r.base), ("lora", r.lora)):
        for i, s in enumerate(samples):
            rows.append({"file": s.name, "side": side, "prompt_index": s.prompt_index, "seed": s.seed,
                         **{m: v[side][i] for m, v in scored.per_sample.items()}})
    return rows


def write_outputs(result: EvalResult, r: Rendered, prompts: list[EvalPrompt], out_dir: Path,
                  run_dir: Path | None = None) -> None:
    images_dir = EVAL_IMAGES.at(out_dir)
    images_dir.mkdir(parents=True, exist_ok=True)
    cells = {}
    for s in r.base + r.lora:
        image = s.image
        image.save(images_dir / s.name)
        cells[(s.prompt_index, s.seed, s.side)] = image
    grid = make_grid([f"[{p.kind}] {p.text}" for p in prompts], r.seeds, cells)
    EVAL_GRID.write(out_dir, grid)
    EVAL_RESULT.write(out_dir, result)
    EVAL_REPORT.write(out_dir, render_report(result.model_dump(mode="json"), grid, images_dir, run_dir))
