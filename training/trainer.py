"""The LoRA training recipe: a frozen diffusion pipeline, PEFT LoRAs on its denoiser (and
optionally its text encoders), one loop.

``train_lora`` reads like diffusers' ``train_text_to_image_lora.py``: load the models, build the
data, add the LoRAs, make the optimizer, (resume,) loop over steps, save. Each part is a helper in
its own module — ``setup`` (device, models, data, the loop's state, resume), ``step`` (one
optimizer step and validation), ``state`` (everything a checkpoint saves), ``save`` (the adapter
folder) — and what depends on the kind of base model is behind ``families.ModelFamily``. It is
written with plain torch instead of ``accelerate``: the factory trains on one device per process,
and ``accelerate``'s process-global state gets in the way when a flow (or a test session) trains
several adapters in one process.

Reproducibility: every random draw (LoRA init, data order, augmentation, VAE sampling, noise,
timesteps) comes from the job's seed, so two CPU runs with the same inputs save identical tensors
— and a run resumed from a checkpoint saves the same tensors as one that never stopped, whether
its feature cache was cold or warm.
"""

from __future__ import annotations

import logging
import math
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lora_factory.errors import StageError

from . import checkpoints as ckpt
from .callbacks import Callback, Diverged, Preempted, Stop, TrainState
from .conditioning import make_conditioner
from .distributed import World, any_across, barrier
from .families import family_of_job
from .job import TrainJob, TrainResult
from .metrics import StepMetrics, peak_memory_mb, weights_norm
from .optim import scale_lr
from .samples import render_samples
from .save import save_adapter
from .setup import (
    TrainData,
    add_trainable_loras,
    attach_denoiser,
    build_data,
    builtin_callbacks,
    encoders_before_denoiser,
    fresh_state,
    load_frozen_pipeline,
    placement,
    resolve_device,
    restore_best,
    resume,
)
from .state import LoopState
from .step import Model, StepReport, train_step, validate

log = logging.getLogger(__name__)

OnStep = Callable[[int, dict[str, float]], None]
__all__ = ["OnStep", "TrainJob", "TrainResult", "resolve_device", "train_lora"]


def train_lora(job: TrainJob, *, on_step: OnStep | None = None,
               callbacks: list[Callback] | None = None) -> TrainResult:
    """Train the job's LoRA and save it to ``job.out_dir``: diffusers format, kohya format
    (``train.export_kohya``), ``training_args.json`` and a model card.

    ``on_step(step, metrics)`` is called every ``train.log_every`` optimizer steps with ``loss``,
    ``loss_smoothed``, ``lr``, ``grad_norm``, ``lora_norm``, ``step_time``, ``samples_per_s``,
    ``peak_memory_mb`` and ``skipped`` (and ``prior_loss`` with prior preservation), and after
    each validation with ``val_loss``. ``callbacks`` get every hook (see ``training.callbacks``).
    """
    started, cfg = time.perf_counter(), job.train
    family = family_of_job(job.base_ref, job.family, job.cache_dir)
    job = job.model_copy(update={"family": family.name})
    device, world, weight_dtype = placement(cfg)

    # Models: everything frozen; the family's noise schedule; the encoders' outputs (cached).
    # Flux / SD3 with the text cache: the denoiser is loaded only once the captions are encoded
    # and the text encoders freed, so the two phases' memory never adds up.
    later = encoders_before_denoiser(cfg, family, job.feature_cache_dir)
    pipe = load_frozen_pipeline(job, family, device, weight_dtype, with_denoiser=not later)
    cond = make_conditioner(pipe, family, cfg, device, weight_dtype, job.feature_cache_dir)
    model = Model(pipe, family, family.noise_scheduler(pipe), cond, device, weight_dtype)
    # Data: buckets on the model's grid, the held-out split, class images (before the LoRAs exist).
    data = build_data(job, pipe, family, world, device)
    sample_prompts = cfg.sample_prompts or sorted({r.caption for r in data.records})[:4]
    with model.autocast():  # the embeddings as a step would compute them
        unloaded = cond.unload_encoders(all_captions(data, sample_prompts))
    if unloaded:
        log.info("text embeddings cached; %s unloaded", ", ".join(unloaded))
    if later:
        attach_denoiser(pipe, job, family, device, weight_dtype)
    # LoRAs, optimizer, schedule, data order: the loop's state, fresh or from the latest checkpoint.
    named = add_trainable_loras(pipe, cfg, job.seed, family)
    state = fresh_state(job, named, data, world, device, weight_dtype,
                        [*builtin_callbacks(cfg, on_step if world.is_main else None), *(callbacks or [])])
    resumed_from = resume(state, job, world)

    loop = _Loop(job, model, data, state, world, sample_prompts)
    stop = loop.run()
    _end(stop, job, state, loop.view)

    result = TrainResult(lora_dir=job.out_dir, steps=state.step, final_loss=state.losses[-1],
                         losses=state.losses, resumed_from=resumed_from,
                         stopped_early=stop.reason if stop else None, best_step=state.best_step,
                         val_loss=state.val_loss, buckets=data.bucket_counts(), cache=cond.report())
    if world.is_main:  # one writer; the other ranks hold identical weights
        save_adapter(pipe, family, job, data, result, device, world.size, cond.pipeline_prompt(sample_prompts))
    barrier(world)
    return result.model_copy(update={"seconds": time.perf_counter() - started})


def all_captions(data: TrainData, sample_prompts: list[str]) -> list[str]:
    """Every caption a step, a validation or a sample grid can encode: the records', the
    class prompt's and the sample prompts (the conditioner adds the empty one)."""
    class_captions = [r.caption for r in data.class_images.records] if data.class_images is not None else []
    return [*(r.caption for r in data.records), *class_captions, *sample_prompts]


def _end(stop: Stop | None, job: TrainJob, state: LoopState, view: TrainState) -> None:
    """Act on why the loop ended: a divergence or SIGTERM is an error (after the checkpoint
    SIGTERM asked for); a callback's stop may restore the best checkpoint's weights."""
    if isinstance(stop, Diverged):
        kept = ckpt.latest_checkpoint(job.checkpoint_dir) if job.checkpoint_dir else None
        raise StageError(f"{stop.reason}; last good checkpoint: {kept or 'none'}")
    if isinstance(stop, Preempted):
        where = f"; checkpoint at {ckpt.step_dir(job.checkpoint_dir, state.step)}" if job.checkpoint_dir else ""
        raise StageError(f"{stop.reason}{where}; resume the run to continue")
    if stop is not None:
        log.warning("%s", stop.reason)
        if stop.restore_best:
            restore_best(state, job.checkpoint_dir)
    state.callbacks.on_train_end(view)
    if not state.losses:
        raise StageError("training finished without a single finite step")


class _SigtermFlag:
    """SIGTERM (a preempted pod, ``prefect`` cancelling) sets a flag; the loop checkpoints at the
    end of the step and stops. Signal handlers can only be installed from the main thread; in a
    worker thread the default handling stays."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self._old: Any = None

    def __enter__(self) -> _SigtermFlag:
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGTERM, lambda *_: self.event.set())
        return self

    def __exit__(self, *exc: object) -> None:
        if self._old is not None:
            signal.signal(signal.SIGTERM, self._old)


class _Loop:
    """The steps and what follows each: the loss history, callbacks, validation, sample grids,
    stop requests and checkpoints."""

    def __init__(self, job: TrainJob, model: Model, data: TrainData, state: LoopState, world: World,
                 sample_prompts: list[str]) -> None:
        self.job, self.cfg, self.model, self.data, self.state, self.world = job, job.train, model, data, state, world
        self.view = TrainState(step=state.step, max_steps=self.cfg.max_steps, checkpoint_dir=job.checkpoint_dir,
                               _scale_lr=lambda f: scale_lr(state.lr_scheduler, state.optimizer, f))
        self.samples_dir = Path(job.samples_dir or job.out_dir / "samples")
        self.sample_prompts = sample_prompts
        self.validation_every = self.cfg.validation_every or self.cfg.checkpoint_every or self.cfg.max_steps

    def run(self) -> Stop | None:
        from tqdm.auto import tqdm

        self._publish()
        self.state.callbacks.on_train_start(self.view)
        progress = tqdm(total=self.cfg.max_steps, initial=self.state.step, desc="train", unit="step",
                        disable=None if self.world.is_main else True)
        try:
            with _SigtermFlag() as sigterm:
                while self.state.step < self.cfg.max_steps:
                    report = train_step(self.model, self.data, self.state, self.cfg, self.job.seed, self.world)
                    if report.diverged is not None:
                        return report.diverged
                    progress.update(1)
                    if report.step % self.cfg.log_every == 0:
                        progress.set_postfix(loss=f"{report.loss:.4f}")
                    stop = self._after_step(report, sigterm)
                    if stop is not None:
                        return stop
        finally:
            progress.close()
        return None

    def _after_step(self, report: StepReport, sigterm: _SigtermFlag) -> Stop | None:
        state, cfg, step = self.state, self.cfg, report.step
        if not report.skipped:
            state.record_loss(report.loss, cfg.loss_smoothing)
        self._publish()
        state.callbacks.on_step(self.view, self._metrics(report))
        if self.data.validation is not None and (step % self.validation_every == 0 or step == cfg.max_steps):
            state.val_loss = validate(self.model, self.data, cfg, self.job.seed)
            state.callbacks.on_validation(self.view, state.val_loss)
            self._update_best(state.val_loss)
        if cfg.sample_every and step % cfg.sample_every == 0 and self.world.is_main:
            grid = render_samples(self.model.pipe, self.model.cond.pipeline_prompt(self.sample_prompts),
                                  cfg.sample_seed, cfg.sample_steps, cfg.resolution, self.model.device,
                                  self.samples_dir / f"step-{step:06d}.png",
                                  **self.model.family.inference_kwargs(self.model.pipe))
            state.callbacks.on_sample(self.view, grid)
        stop = state.callbacks.should_stop(self.view)
        if any_across(sigterm.event.is_set(), self.world):
            stop = Preempted(f"stopped by SIGTERM at step {step}")
        if self.job.checkpoint_dir and ((cfg.checkpoint_every and step % cfg.checkpoint_every == 0)
                                        or stop is not None):
            smoothed = state.loss_smoothed(cfg.loss_smoothing)
            if self.data.validation is None and smoothed is not None:
                self._update_best(smoothed)
            path = self._save_checkpoint(ckpt.step_dir(self.job.checkpoint_dir, step))
            if self.world.is_main:
                ckpt.prune(self.job.checkpoint_dir, cfg.keep_checkpoints)
            state.callbacks.on_checkpoint(self.view, path)
        return stop

    def _metrics(self, report: StepReport) -> StepMetrics:
        """The step's metrics; the costly ones are computed only if a callback reads them."""
        smoothed = self.state.loss_smoothed(self.cfg.loss_smoothing)
        values: dict[str, float | Callable[[], float]] = {
            "loss": report.loss, "loss_smoothed": float(smoothed or report.loss), "lr": report.lr,
            "grad_norm": report.grad_norm, "lora_norm": lambda: weights_norm(self.state.params),
            "step_time": report.seconds, "samples_per_s": report.samples / report.seconds,
            "peak_memory_mb": lambda: peak_memory_mb(self.model.device), "skipped": float(report.skipped)}
        if report.prior_loss is not None:
            values["prior_loss"] = report.prior_loss
        return StepMetrics(values)

    def _publish(self) -> None:
        """What callbacks see of the state (``TrainState``)."""
        state, view = self.state, self.view
        view.step, view.epoch, view.lr = state.step, state.order.epoch, state.lr
        view.loss_smoothed = state.loss_smoothed(self.cfg.loss_smoothing)
        view.best_metric, view.best_step = state.best_metric, state.best_step

    def _update_best(self, metric: float) -> None:
        state = self.state
        if self.job.checkpoint_dir is None or not math.isfinite(metric):
            return
        if state.best_metric is None or metric < state.best_metric:
            state.best_metric, state.best_step = metric, state.step
            self._publish()
            self._save_checkpoint(Path(self.job.checkpoint_dir) / ckpt.BEST)

    def _save_checkpoint(self, target: Path) -> Path:
        """Every rank calls this (it gathers the ranks' generator states); rank 0 writes."""
        snapshot = self.state.state_dict(self.world)
        if self.world.is_main:
            ckpt.save_checkpoint(target, self.state.weights, snapshot)
        barrier(self.world)
        return target
