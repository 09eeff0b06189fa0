"""The LoRA training loop: a frozen diffusion pipeline, PEFT LoRAs on its UNet (and optionally
its text encoders), one loop.

The loop follows diffusers' ``train_text_to_image_lora.py`` step for step (VAE latents, seeded
noise and timesteps, the scheduler's forward process, epsilon or velocity target, MSE) so a
reader who knows that script can audit this one. It is written with plain torch instead of
``accelerate``: the factory trains on one device per process, and ``accelerate``'s
process-global state gets in the way when a flow (or a test session) trains several adapters
in one process.

Reproducibility: every random draw (LoRA init, data order, augmentation, VAE sampling, noise,
timesteps) comes from ``seed``, so two CPU runs with the same inputs save identical tensors —
and a run resumed from a checkpoint saves the same tensors as one that never stopped, whether
its feature cache was cold or warm.

The jobs around the loop live in their own modules: ``buckets`` and ``dataset`` (aspect
buckets, examples, augmentation, held-out split, data order), ``captions``, ``conditioning``
and ``feature_cache`` (latents and text embeddings, cached by content), ``lora``, ``prior``
(class images), ``losses``, ``optim``, ``callbacks`` (monitoring API, early stop, plateau),
``checkpoints``, ``samples``, ``export_kohya`` and ``model_card``.
"""

from __future__ import annotations

import json
import logging
import math
import resource
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lora_factory.config import TrainConfig
from lora_factory.errors import StageError

from . import checkpoints as ckpt
from .buckets import Bucket, bucket_grid
from .callbacks import (
    Callback,
    CallbackList,
    EarlyStopping,
    MetricsSink,
    PlateauLR,
    Stop,
    TrainState,
)
from .conditioning import Conditioner
from .dataset import (
    CaptionedImageDataset,
    DataOrder,
    Sample,
    augment,
    group_batches,
    read_records,
    split_records,
)
from .distributed import (
    any_across,
    average_gradients,
    barrier,
    gather_objects,
    init_world,
    mean_across,
)
from .export_kohya import KOHYA_WEIGHT_NAME, save_kohya
from .feature_cache import FeatureCache, module_fingerprint
from .lora import LORA_WEIGHT_NAME, add_loras, lora_state, save_lora, text_encoders
from .losses import diffusion_loss, sample_noise, training_target
from .model_card import render_model_card
from .optim import make_lr_scheduler, make_optimizer, scale_lr
from .prior import class_draws, class_image_dir, ensure_class_images
from .samples import render_samples

log = logging.getLogger(__name__)

TRAINING_ARGS_NAME = "training_args.json"
MODEL_CARD_NAME = "README.md"
SAMPLE_GRID_NAME = "samples.png"
FAMILIES = ("sd15", "sdxl")

OnStep = Callable[[int, dict[str, float]], None]


@dataclass
class TrainResult:
    """What a training run produced: where the adapter is, and how the loss went."""

    lora_dir: Path
    steps: int
    final_loss: float
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    resumed_from: int | None = None  # the checkpoint step a resumed run continued from
    stopped_early: str | None = None  # a callback's reason, when it ended the run before max_steps
    best_step: int | None = None
    val_loss: float | None = None  # the last validation loss (of the restored best on early stop)
    buckets: dict[str, int] = field(default_factory=dict)  # training images per bucket ("WxH")
    cache: dict[str, Any] = field(default_factory=dict)  # feature-cache hits/misses, VAE encodes


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA when present, else CPU; an explicit ``cuda`` without one is a user error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise StageError("train.device is 'cuda' but no CUDA device is available; use 'auto' or 'cpu'")
    return torch.device(name)


def weight_dtype_for(mixed_precision: str, device: torch.device) -> torch.dtype:
    """The dtype of the frozen weights. fp16 on CPU is refused: it is slow and overflows."""
    if mixed_precision == "fp16":
        if device.type != "cuda":
            raise StageError("train.mixed_precision 'fp16' needs a CUDA device; use 'no' or 'bf16'")
        return torch.float16
    if mixed_precision == "bf16":
        return torch.bfloat16
    return torch.float32


def _write_training_args(out_dir: Path, args: dict[str, Any]) -> None:
    import diffusers
    import peft

    args = {**args, "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__,
                                 "peft": peft.__version__}}
    (out_dir / TRAINING_ARGS_NAME).write_text(json.dumps(args, indent=2, default=str) + "\n")




def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _builtin_callbacks(cfg: TrainConfig, on_step: OnStep | None) -> list[Callback]:
    cbs: list[Callback] = []
    if cfg.early_stopping_window:
        cbs.append(EarlyStopping(cfg.early_stopping_window))
    if cfg.plateau_patience:
        cbs.append(PlateauLR(cfg.plateau_patience, cfg.plateau_factor))
    if on_step is not None:
        cbs.append(MetricsSink(on_step, cfg.log_every))
    return cbs


def model_grid(pipe: Any) -> int:
    """The pixel multiple the model needs: the VAE's downsampling times the UNet's (64 for SD1.5,
    32 for SDXL, 16 for the tiny test models)."""
    vae_factor = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
    return vae_factor * 2 ** (len(pipe.unet.config.down_block_types) - 1)


def bucket_grid_for(cfg: TrainConfig, pipe: Any) -> list[Bucket]:
    multiple = model_grid(pipe)
    step = cfg.bucket_step or multiple
    if step % multiple:
        raise StageError(f"train.bucket_step {step} is not a multiple of {multiple}, the base model's "
                         f"latent grid in pixels; use {multiple} or a multiple of it")
    return bucket_grid(cfg.resolution, step, cfg.min_bucket_side, cfg.max_bucket_side)


def make_conditioner(pipe: Any, family: str, cfg: TrainConfig, device: torch.device,
                     weight_dtype: torch.dtype, cache_dir: Path | None) -> Conditioner:
    """A ``Conditioner`` whose caches live under ``cache_dir`` in a folder per encoder
    fingerprint (so another base model never reads this one's latents)."""
    latent_root = cache_dir if cache_dir is not None and cfg.cache_latents else None
    # Shuffled tags make a new caption almost every step: caching those would fill the disk
    # with entries that are never read again (kohya refuses the combination for the same reason).
    text_root = (cache_dir if cache_dir is not None and cfg.cache_text_embeddings
                 and not cfg.train_text_encoder and not cfg.shuffle_tags else None)
    latent_ns = f"latents/{module_fingerprint(pipe.vae)}" if latent_root else ""
    text_ns = ""
    if text_root:
        encoders = [getattr(pipe, n) for n in text_encoders(pipe)]
        text_ns = f"text/{module_fingerprint(encoders[0], family, *map(module_fingerprint, encoders[1:]))}"
    return Conditioner(pipe, family, device, weight_dtype, FeatureCache(latent_root, latent_ns),
                       FeatureCache(text_root, text_ns), text_trainable=cfg.train_text_encoder)


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


def train_lora(
    base_ref: str,
    family: str,
    dataset_dir: Path,
    cfg: TrainConfig,
    out_dir: Path,
    cache_dir: Path,
    seed: int,
    on_step: OnStep | None = None,
    *,
    checkpoint_dir: Path | None = None,
    feature_cache_dir: Path | None = None,
    callbacks: list[Callback] | None = None,
    samples_dir: Path | None = None,
    card: dict[str, Any] | None = None,
) -> TrainResult:
    """Train a UNet LoRA on ``dataset_dir`` and save it to ``out_dir``: diffusers format, kohya
    format (``cfg.export_kohya``), ``training_args.json`` and a model card.

    ``on_step(step, metrics)`` is called every ``cfg.log_every`` optimizer steps with ``loss``,
    ``loss_smoothed``, ``lr``, ``grad_norm``, ``lora_norm``, ``step_time``, ``samples_per_s``,
    ``peak_memory_mb`` and ``skipped``, and after each validation with ``val_loss``.
    ``callbacks`` get every hook (see ``training.callbacks``). With ``checkpoint_dir`` the run
    checkpoints there and, when ``cfg.resume``, continues from its latest checkpoint. With
    ``feature_cache_dir``, latents and text embeddings are cached there by content (and class
    images for prior preservation kept there), shared by every run that uses it. ``card``
    adds to the model card (``trigger_word``, ``dataset`` statistics, ``eval_scores``).
    """
    from diffusers import DDPMScheduler
    from tqdm.auto import tqdm

    from lora_factory.models import load_pipeline

    if family not in FAMILIES:
        raise StageError(f"unknown base model family {family!r}; expected one of {FAMILIES}")
    started = time.perf_counter()
    out_dir = Path(out_dir)
    samples_dir = Path(samples_dir) if samples_dir is not None else out_dir / "samples"
    device = resolve_device(cfg.device)
    world = init_world(device.type)
    if world.active and device.type == "cuda":
        device = torch.device(world.device)
    weight_dtype = weight_dtype_for(cfg.mixed_precision, device)

    # Models: everything frozen, then LoRAs (UNet, optionally text encoders) are the only
    # trainable parts.
    pipe = load_pipeline(base_ref, family, cache_dir, device=str(device), dtype=weight_dtype)
    for module in pipe.components.values():
        if isinstance(module, torch.nn.Module):
            module.requires_grad_(False)
            module.eval()
    # The VAE stays fp32: SDXL's VAE overflows in fp16, and it only encodes (no activations kept).
    vae, unet = pipe.vae, pipe.unet
    if vae.dtype != torch.float32:
        vae.to(torch.float32)
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    if noise_scheduler.config.prediction_type not in ("epsilon", "v_prediction"):
        raise StageError(f"the base model's scheduler predicts {noise_scheduler.config.prediction_type!r}; "
                         "training supports 'epsilon' and 'v_prediction'")

    # Data: buckets on the model's latent grid, a seeded held-out split, a resumable data order,
    # hashes for the resume check.
    records = read_records(dataset_dir)
    train_records, val_records = split_records(records, cfg.validation_split, seed)
    grid = bucket_grid_for(cfg, pipe) if cfg.aspect_buckets else None
    dataset = CaptionedImageDataset(dataset_dir, cfg.resolution, records=train_records, grid=grid)
    val_dataset = (CaptionedImageDataset(dataset_dir, cfg.resolution, records=val_records, grid=grid)
                   if val_records else None)
    if dataset.upscaled:
        log.warning("%d of %d training images are smaller than %d px and were upscaled "
                    "(train.aspect_buckets is off)", dataset.upscaled, len(dataset), cfg.resolution)
    order = DataOrder(dataset.buckets, cfg.batch_size, seed, repeats=cfg.repeats)
    data_hash = ckpt.dataset_hash([(r.path, r.caption, r.sha256) for r in records])
    cfg_hash = ckpt.config_hash(cfg, base_ref=base_ref, family=family, seed=seed, world_size=world.size)
    cond = make_conditioner(pipe, family, cfg, device, weight_dtype, feature_cache_dir)

    # Prior preservation: class images from the base model, made before the LoRA exists.
    class_dataset = None
    if cfg.prior_preservation:
        folder = class_image_dir(feature_cache_dir or out_dir / "class_images",
                                 module_fingerprint(unet), cfg, seed)
        if world.is_main:
            ensure_class_images(pipe, cfg, folder, seed, device)
        barrier(world)
        class_dataset = CaptionedImageDataset(folder, cfg.resolution, grid=None)

    named = add_loras(pipe, cfg, seed)
    params = list(named.values())
    if cfg.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
        if cfg.train_text_encoder:
            for name in text_encoders(pipe):
                getattr(pipe, name).gradient_checkpointing_enable()
    unet.train()

    optimizer = make_optimizer(cfg, named)
    lr_scheduler = make_lr_scheduler(cfg, optimizer)
    use_amp = weight_dtype != torch.float32
    scaler = torch.amp.GradScaler(device.type, enabled=weight_dtype == torch.float16)
    # Each rank draws its own noise; rank 0's draws are a single-process run's.
    generator = torch.Generator(device).manual_seed(seed + 1_000_003 * world.rank)

    cbs = CallbackList([*_builtin_callbacks(cfg, on_step if world.is_main else None), *(callbacks or [])])
    state = TrainState(step=0, max_steps=cfg.max_steps, checkpoint_dir=checkpoint_dir,
                       _scale_lr=lambda f: scale_lr(lr_scheduler, optimizer, f))
    losses: list[float] = []
    ema, ema_count, nan_streak, val_loss = 0.0, 0, 0, None
    resumed_from = None

    def snapshot() -> dict[str, Any]:
        return {
            "step": state.step, "epoch": order.epoch, "data_order": order.state_dict(),
            "optimizer": optimizer.state_dict(), "lr_scheduler": lr_scheduler.state_dict(),
            "scaler": scaler.state_dict(), "rng": ckpt.rng_states(generator),
            "losses": list(losses), "ema": ema, "ema_count": ema_count, "nan_streak": nan_streak,
            "val_loss": val_loss, "best_metric": state.best_metric, "best_step": state.best_step,
            "callbacks": cbs.state_dict(), "dataset_hash": data_hash, "config_hash": cfg_hash,
            "rank_generators": gather_objects(generator.get_state(), world),
        }

    def save_checkpoint(target: Path) -> Path:
        """Every rank calls this (it gathers the ranks' generator states); rank 0 writes."""
        state_now = snapshot()
        if world.is_main:
            ckpt.save_checkpoint(target, named, state_now)
        barrier(world)
        return target

    # Resume: weights, optimizer, schedule, random states and data position from the latest
    # checkpoint, after checking it was made from this dataset and these settings.
    latest = ckpt.latest_checkpoint(checkpoint_dir) if checkpoint_dir and cfg.resume else None
    if latest is not None:
        weights, saved = ckpt.load_checkpoint(latest)
        ckpt.check_compatible(latest, saved, data_hash, cfg_hash, cfg.force_resume)
        with torch.no_grad():
            for name, p in named.items():
                p.copy_(weights[name].to(p.device, p.dtype))
        optimizer.load_state_dict(saved["optimizer"])
        lr_scheduler.load_state_dict(saved["lr_scheduler"])
        scaler.load_state_dict(saved["scaler"])
        ckpt.restore_rng_states(saved["rng"], generator)
        generator.set_state(saved["rank_generators"][world.rank])
        order.load_state_dict(saved["data_order"])
        cbs.load_state_dict(saved["callbacks"])
        losses, ema, ema_count = list(saved["losses"]), saved["ema"], saved["ema_count"]
        nan_streak, val_loss = saved["nan_streak"], saved["val_loss"]
        state.step, state.best_metric, state.best_step = saved["step"], saved["best_metric"], saved["best_step"]
        resumed_from = state.step
        log.info("resuming from %s (step %d of %d)", latest, state.step, cfg.max_steps)

    def predict(latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor,
                samples: list[Sample]) -> tuple[torch.Tensor, torch.Tensor]:
        noisy_latents = noise_scheduler.add_noise(latents, noise, timesteps)
        with torch.autocast(device.type, dtype=weight_dtype, enabled=use_amp):
            hidden_states, added_cond = cond.text(samples)
            model_pred = unet(noisy_latents, timesteps, hidden_states,
                              added_cond_kwargs=added_cond, return_dict=False)[0]
        return model_pred, training_target(noise_scheduler, latents, noise, timesteps)

    def batch_loss(samples: list[Sample], snr_gamma: float | None) -> torch.Tensor:
        """One micro-batch's loss; every draw (VAE sample, noise, timesteps) from ``generator``."""
        latents = cond.latents(samples, generator)
        noise = sample_noise(latents, generator, cfg.noise_offset)
        timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps,
                                  (latents.shape[0],), generator=generator, device=device).long()
        model_pred, target = predict(latents, noise, timesteps, samples)
        return diffusion_loss(model_pred, target, timesteps, noise_scheduler, snr_gamma)

    def validate() -> float:
        """Mean MSE on the held-out images with fixed noise and timesteps (a generator re-seeded
        for every pass, the VAE mode instead of a sample): the same weights give the same value."""
        assert val_dataset is not None
        gen = torch.Generator(device).manual_seed(seed + 104_729)
        total, count = 0.0, 0
        unet.eval()
        with torch.no_grad():
            for indices in group_batches(list(range(len(val_dataset))), val_dataset.buckets,
                                         cfg.batch_size):
                samples = [val_dataset.sample(j) for j in indices]
                latents = cond.latents(samples, None)
                noise = torch.randn(latents.shape, generator=gen, device=device, dtype=latents.dtype)
                timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps,
                                          (latents.shape[0],), generator=gen, device=device).long()
                pred, target = predict(latents, noise, timesteps, samples)
                total += float(diffusion_loss(pred, target, timesteps, noise_scheduler, None)) * len(latents)
                count += len(latents)
        unet.train()
        return total / count

    def update_best(metric: float) -> None:
        if checkpoint_dir is None or not math.isfinite(metric):
            return
        if state.best_metric is None or metric < state.best_metric:
            state.best_metric, state.best_step = metric, state.step
            save_checkpoint(Path(checkpoint_dir) / ckpt.BEST)

    sample_prompts = cfg.sample_prompts or sorted({r.caption for r in records})[:4]
    validation_every = cfg.validation_every or cfg.checkpoint_every or cfg.max_steps
    accum = cfg.gradient_accumulation_steps
    stop: Stop | None = None
    cbs.on_train_start(state)
    progress = tqdm(total=cfg.max_steps, initial=state.step, desc="train", unit="step",
                    disable=None if world.is_main else True)
    with _SigtermFlag() as sigterm:
        while state.step < cfg.max_steps and stop is None:
            step = state.step + 1
            t0 = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            step_loss, prior_loss, finite, n_samples = 0.0, 0.0, True, 0
            for micro in range(accum):
                # Each rank takes its own batch of the world's next ``world.size`` batches.
                draws = [order.next_batch() for _ in range(world.size)][world.rank]
                samples = [augment(dataset, d, random_flip=cfg.random_flip,
                                   caption_dropout=cfg.caption_dropout, shuffle_tags=cfg.shuffle_tags,
                                   keep_tokens=cfg.keep_tokens) for d in draws]
                loss = batch_loss(samples, cfg.snr_gamma)
                n_samples += len(samples)
                if class_dataset is not None:
                    # DreamBooth's prior loss: as many class images as instance images, own forward
                    # (class images are square, instance batches come in any bucket).
                    draws = class_draws(step, micro, accum, len(samples), len(class_dataset), seed)
                    prior = batch_loss([class_dataset.sample(d.index) for d in draws], cfg.snr_gamma)
                    prior_loss += float(prior.detach()) / accum
                    loss = loss + cfg.prior_loss_weight * prior
                    n_samples += len(draws)
                if not torch.isfinite(loss):
                    finite = False
                    step_loss = float("nan")
                    continue
                scaler.scale(loss / accum).backward()
                step_loss += loss.item() / accum

            if world.active:
                average_gradients(params, world)
                step_loss = mean_across(step_loss, world)
                finite = not any_across(not finite, world)
                n_samples *= world.size
            scaler.unscale_(optimizer)
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm))
            lr = float(lr_scheduler.get_last_lr()[0])
            # fp16: the GradScaler owns inf gradients (it skips the step and lowers its scale).
            finite = finite and (scaler.is_enabled() or math.isfinite(grad_norm))
            if finite:
                scaler.step(optimizer)
                nan_streak = 0
            else:
                # NaN guard: skip the update (the weights stay good), lower the LR, and give up
                # after nan_max_consecutive bad steps in a row.
                optimizer.zero_grad(set_to_none=True)
                nan_streak += 1
                scale_lr(lr_scheduler, optimizer, cfg.nan_lr_factor)
                if nan_streak >= cfg.nan_max_consecutive:
                    kept = ckpt.latest_checkpoint(checkpoint_dir) if checkpoint_dir else None
                    progress.close()
                    raise StageError(
                        f"training diverged at step {step}: the loss or gradient was not finite for "
                        f"{nan_streak} steps in a row (skipped, LR lowered to {lr * cfg.nan_lr_factor:g}); "
                        f"lower train.learning_rate (now {cfg.learning_rate:g}) or turn off mixed precision; "
                        f"last good checkpoint: {kept or 'none'}")
                log.warning("step %d: non-finite loss/gradient, update skipped, LR lowered", step)
            scaler.update()
            lr_scheduler.step()
            state.step, state.epoch = step, order.epoch
            step_time = time.perf_counter() - t0

            if finite:
                losses.append(step_loss)
                ema_count += 1
                ema = cfg.loss_smoothing * ema + (1 - cfg.loss_smoothing) * step_loss
                state.loss_smoothed = ema / (1 - cfg.loss_smoothing ** ema_count)
            state.lr = float(lr_scheduler.get_last_lr()[0])
            with torch.no_grad():
                lora_norm = float(torch.linalg.vector_norm(torch.stack(torch._foreach_norm(params))))
            metrics = {
                "loss": step_loss, "loss_smoothed": float(state.loss_smoothed or step_loss), "lr": lr,
                "grad_norm": grad_norm, "lora_norm": lora_norm, "step_time": step_time,
                "samples_per_s": n_samples / step_time, "peak_memory_mb": _peak_memory_mb(device),
                "skipped": float(not finite),
            }
            if class_dataset is not None:
                metrics["prior_loss"] = prior_loss
            progress.update(1)
            progress.set_postfix(loss=f"{step_loss:.4f}")
            cbs.on_step(state, metrics)

            if val_dataset is not None and (step % validation_every == 0 or step == cfg.max_steps):
                val_loss = validate()
                cbs.on_validation(state, val_loss)
                update_best(val_loss)
            if cfg.sample_every and step % cfg.sample_every == 0 and world.is_main:
                grid = render_samples(pipe, sample_prompts, cfg.sample_seed, cfg.sample_steps,
                                      cfg.resolution, device, samples_dir / f"step-{step:06d}.png")
                cbs.on_sample(state, grid)

            stop = cbs.should_stop(state)
            if any_across(sigterm.event.is_set(), world):
                stop = Stop(f"stopped by SIGTERM at step {step}", restore_best=False)
            if checkpoint_dir and ((cfg.checkpoint_every and step % cfg.checkpoint_every == 0)
                                   or stop is not None):
                if val_dataset is None and state.loss_smoothed is not None:
                    update_best(state.loss_smoothed)
                path = save_checkpoint(ckpt.step_dir(checkpoint_dir, step))
                if world.is_main:
                    ckpt.prune(checkpoint_dir, cfg.keep_checkpoints)
                cbs.on_checkpoint(state, path)
    progress.close()

    if stop is not None and stop.reason.startswith("stopped by SIGTERM"):
        where = f"; checkpoint at {ckpt.step_dir(checkpoint_dir, state.step)}" if checkpoint_dir else ""
        raise StageError(f"{stop.reason}{where}; resume the run to continue")
    if stop is not None:
        log.warning("%s", stop.reason)
        best = Path(checkpoint_dir) / ckpt.BEST if checkpoint_dir else None
        if stop.restore_best and best is not None and (best / ckpt.STATE).is_file():
            weights, saved = ckpt.load_checkpoint(best)
            with torch.no_grad():
                for name, p in named.items():
                    p.copy_(weights[name].to(p.device, p.dtype))
            val_loss = saved["val_loss"]
            log.warning("restored the best checkpoint (step %s)", saved["best_step"])
    cbs.on_train_end(state)
    if not losses:
        raise StageError("training finished without a single finite step")

    # Save: diffusers file, kohya file, training args, a final sample grid and the model card.
    bucket_counts = dict(sorted(Counter(str(b) for b in dataset.buckets).items()))
    cache_report = {"latents": cond.latent_cache.stats(), "text": cond.text_cache.stats(),
                    "vae_encodes": cond.vae_encodes}
    if world.is_main:  # one writer; the other ranks hold identical weights
        out_dir.mkdir(parents=True, exist_ok=True)
        save_lora(pipe, out_dir)
        alpha = cfg.alpha or cfg.rank
        info = {"base_ref": base_ref, "family": family, "dataset_dir": str(dataset_dir), "seed": seed,
                "num_images": len(dataset), "num_validation_images": len(val_records),
                "device": str(device), "steps": state.step, "final_loss": losses[-1],
                "resolution": cfg.resolution, "learning_rate": cfg.learning_rate,
                "dataset_hash": data_hash, "resumed_from": resumed_from,
                "stopped_early": stop.reason if stop else None, "best_step": state.best_step,
                "val_loss": val_loss, "buckets": bucket_counts, "cache": cache_report,
                "world_size": world.size, "train": cfg.model_dump()}
        files = {"diffusers": LORA_WEIGHT_NAME}
        if cfg.export_kohya:
            peft_state = {f"{component}.{k}": v for component, state_dict in lora_state(pipe).items()
                          for k, v in state_dict.items()}
            save_kohya(peft_state, out_dir / KOHYA_WEIGHT_NAME, family, cfg.rank, alpha, info)
            files["kohya"] = KOHYA_WEIGHT_NAME
        _write_training_args(out_dir, info)
        grid_name = None
        if cfg.sample_every:
            render_samples(pipe, sample_prompts, cfg.sample_seed, cfg.sample_steps, cfg.resolution, device,
                           out_dir / SAMPLE_GRID_NAME)
            grid_name = SAMPLE_GRID_NAME
        card = card or {}
        (out_dir / MODEL_CARD_NAME).write_text(render_model_card(
            base_ref=base_ref, family=family, trigger_word=card.get("trigger_word"),
            train_config=cfg.model_dump(),
            dataset={"images": len(records), "train_images": len(dataset),
                     "validation_images": len(val_records), "dataset_hash": data_hash,
                     "buckets": bucket_counts,
                     **card.get("dataset", {})},
            result={"steps": state.step, "final_loss": round(losses[-1], 6),
                    "val_loss": None if val_loss is None else round(val_loss, 6),
                    "stopped_early": stop.reason if stop else None, "seed": seed},
            eval_scores=card.get("eval_scores"), sample_grid=grid_name, files=files), encoding="utf-8")
    barrier(world)
    seconds = time.perf_counter() - started
    return TrainResult(lora_dir=out_dir, steps=state.step, final_loss=losses[-1], losses=losses,
                       seconds=seconds, resumed_from=resumed_from,
                       stopped_early=stop.reason if stop else None, best_step=state.best_step,
                       val_loss=val_loss, buckets=bucket_counts, cache=cache_report)
