"""Everything a run builds before its first step: the device, the frozen models with their
LoRAs, the data, and the loop's state (fresh, or restored from the latest checkpoint)."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lora_factory.buckets import Bucket, bucket_grid
from lora_factory.config import TrainConfig
from lora_factory.errors import StageError

from . import checkpoints as ckpt
from .callbacks import Callback, CallbackList, EarlyStopping, MetricsSink, PlateauLR
from .dataset import CaptionedImageDataset, DataOrder, Record, read_records, split_records
from .distributed import World, barrier, init_world
from .families import ModelFamily, denoiser_of
from .feature_cache import module_fingerprint
from .job import TrainJob
from .lora import add_loras, init_from_lora, text_encoders
from .optim import make_lr_scheduler, make_optimizer
from .prior import class_image_dir, ensure_class_images
from .state import LoopState

log = logging.getLogger(__name__)


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


def placement(cfg: TrainConfig) -> tuple[torch.device, World, torch.dtype]:
    """Where this process trains: its device, its place among the launched processes (a
    ``World()`` of one without a launcher), and the dtype of the frozen weights."""
    device = resolve_device(cfg.device)
    world = init_world(device.type)
    if world.active and device.type == "cuda":
        device = torch.device(world.device)
    return device, world, weight_dtype_for(cfg.mixed_precision, device)


def _bnb_kwargs(cfg: TrainConfig) -> dict[str, Any] | None:
    """bitsandbytes' settings for ``train.base_quantization`` on a GPU: NF4 (double quantisation,
    bf16 compute, as QLoRA) or int8; ``None`` for a full-precision base (the CPU: quantize.py)."""
    if cfg.base_quantization == "none":
        return None
    if cfg.base_quantization == "nf4":
        return {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True,
                "bnb_4bit_compute_dtype": torch.bfloat16}
    return {"load_in_8bit": True}


def quantization(cfg: TrainConfig, family: ModelFamily, device: torch.device) -> dict[str, Any]:
    """``from_pretrained``'s ``quantization_config`` for the whole pipeline: the denoiser quantised."""
    kwargs = _bnb_kwargs(cfg)
    if kwargs is None or device.type == "cpu":  # the CPU quantises after loading (quantize.py)
        return {}
    from diffusers import PipelineQuantizationConfig

    backend = "bitsandbytes_4bit" if cfg.base_quantization == "nf4" else "bitsandbytes_8bit"
    return {"quantization_config": PipelineQuantizationConfig(
        quant_backend=backend, quant_kwargs=kwargs, components_to_quantize=[family.denoiser])}


def _quantise_on_cpu(denoiser: Any, cfg: TrainConfig, device: torch.device) -> None:
    """On the CPU, where diffusers' bitsandbytes quantizer refuses to load, quantise the loaded
    denoiser in place (bitsandbytes runs NF4 / int8 layers on the CPU)."""
    if cfg.base_quantization != "none" and device.type == "cpu":
        from .quantize import quantise_on_cpu

        quantise_on_cpu(denoiser, cfg.base_quantization)


def encoders_before_denoiser(cfg: TrainConfig, family: ModelFamily, cache_dir: Path | None) -> bool:
    """Whether the run encodes every caption and frees the text encoders before it loads the
    denoiser (peak memory: the larger phase, not their sum): the text cache is on, the family
    frees its encoders, and no class images need the whole pipeline first."""
    from .conditioning import text_cache_root

    return (bool(family.unloadable_encoders) and text_cache_root(cfg, cache_dir) is not None
            and not cfg.prior_preservation)


def _freeze(modules: Any) -> None:
    """Frozen weights in eval mode (no dropout): only the LoRAs train."""
    for module in modules:
        if isinstance(module, torch.nn.Module):
            module.requires_grad_(False)
            module.eval()


def load_frozen_pipeline(job: TrainJob, family: ModelFamily, device: torch.device, weight_dtype: torch.dtype,
                         with_denoiser: bool = True) -> Any:
    """The base pipeline with every weight frozen and in eval mode; without its denoiser when
    ``with_denoiser`` is false (``attach_denoiser`` adds it later). The VAE stays fp32: SDXL's VAE
    overflows in fp16, and it only encodes (no activations kept)."""
    from lora_factory.models import load_pipeline

    extra = quantization(job.train, family, device) if with_denoiser else {family.denoiser: None}
    pipe = load_pipeline(job.base_ref, job.family, job.cache_dir, device=str(device), dtype=weight_dtype, **extra)
    if with_denoiser:
        _quantise_on_cpu(getattr(pipe, family.denoiser), job.train, device)
    _freeze(pipe.components.values())
    if pipe.vae.dtype != torch.float32:
        pipe.vae.to(torch.float32)
    return pipe


def attach_denoiser(pipe: Any, job: TrainJob, family: ModelFamily, device: torch.device,
                    weight_dtype: torch.dtype) -> None:
    """Load the denoiser alone (quantised as ``train.base_quantization`` says), frozen, into a
    pipeline that was loaded without it."""
    from diffusers import BitsAndBytesConfig

    from lora_factory.models import load_pipeline_part

    bnb = _bnb_kwargs(job.train)
    on_gpu = bnb is not None and device.type != "cpu"
    extra = {"quantization_config": BitsAndBytesConfig(**bnb)} if on_gpu else {}
    denoiser = load_pipeline_part(job.base_ref, job.family, job.cache_dir, family.denoiser, device=str(device),
                                  dtype=weight_dtype, **extra)
    _quantise_on_cpu(denoiser, job.train, device)
    _freeze([denoiser])
    pipe.register_modules(**{family.denoiser: denoiser})


def add_trainable_loras(pipe: Any, cfg: TrainConfig, seed: int, family: ModelFamily) -> dict[str, torch.nn.Parameter]:
    """The LoRAs (the denoiser, optionally the text encoders): the only trainable weights."""
    named = add_loras(pipe, cfg, seed, family)
    if cfg.init_lora:  # continue from another adapter (the champion's) instead of from zero
        loaded = init_from_lora(pipe, Path(cfg.init_lora))
        log.info("LoRA initialised from %s (%s)", cfg.init_lora, ", ".join(f"{k}: {v} tensors" for k, v in loaded.items()))
    denoiser = getattr(pipe, family.denoiser)
    if cfg.gradient_checkpointing:
        denoiser.enable_gradient_checkpointing()
        if cfg.train_text_encoder:
            for name in text_encoders(pipe):
                getattr(pipe, name).gradient_checkpointing_enable()
    denoiser.train()
    return named


@dataclass(frozen=True)
class TrainData:
    """The run's examples: the training set, the held-out set, the class images (prior
    preservation) and the dataset's hash for the resume check."""

    records: list[Record]
    train: CaptionedImageDataset
    validation: CaptionedImageDataset | None
    class_images: CaptionedImageDataset | None
    dataset_hash: str

    def bucket_counts(self) -> dict[str, int]:
        return dict(sorted(Counter(str(b) for b in self.train.buckets).items()))


def bucket_grid_for(cfg: TrainConfig, multiple: int) -> list[Bucket]:
    step = cfg.bucket_step or multiple
    if step % multiple:
        raise StageError(f"train.bucket_step {step} is not a multiple of {multiple}, the base model's "
                         f"latent grid in pixels; use {multiple} or a multiple of it")
    return bucket_grid(cfg.resolution, step, cfg.min_bucket_side, cfg.max_bucket_side)


def build_data(job: TrainJob, pipe: Any, family: ModelFamily, world: World, device: torch.device) -> TrainData:
    """Buckets on the model's latent grid, a seeded held-out split, and (prior preservation)
    class images made by the base model before the LoRA exists."""
    cfg = job.train
    records = read_records(job.dataset_dir)
    train_records, val_records = split_records(records, cfg.validation_split, job.seed)
    grid = bucket_grid_for(cfg, family.latent_grid(pipe)) if cfg.aspect_buckets else None
    train = CaptionedImageDataset(job.dataset_dir, cfg.resolution, records=train_records, grid=grid)
    validation = (CaptionedImageDataset(job.dataset_dir, cfg.resolution, records=val_records, grid=grid)
                  if val_records else None)
    if train.upscaled:
        log.warning("%d of %d training images are smaller than %d px and were upscaled "
                    "(train.aspect_buckets is off)", train.upscaled, len(train), cfg.resolution)
    class_images = None
    if cfg.prior_preservation:
        folder = class_image_dir(job.feature_cache_dir or job.out_dir / "class_images",
                                 module_fingerprint(denoiser_of(pipe)), cfg, job.seed)
        if world.is_main:
            ensure_class_images(pipe, cfg, folder, job.seed, device)
        barrier(world)
        class_images = CaptionedImageDataset(folder, cfg.resolution, grid=None)
    data_hash = ckpt.dataset_hash([(r.path, r.caption, r.sha256) for r in records])
    return TrainData(records, train, validation, class_images, data_hash)


def builtin_callbacks(cfg: TrainConfig, on_step: Any) -> list[Callback]:
    cbs: list[Callback] = []
    if cfg.early_stopping_window:
        cbs.append(EarlyStopping(cfg.early_stopping_window))
    if cfg.plateau_patience:
        cbs.append(PlateauLR(cfg.plateau_patience, cfg.plateau_factor))
    if on_step is not None:
        cbs.append(MetricsSink(on_step, cfg.log_every))
    return cbs


def fresh_state(job: TrainJob, named: dict[str, torch.nn.Parameter], data: TrainData, world: World,
                device: torch.device, weight_dtype: torch.dtype, callbacks: list[Callback]) -> LoopState:
    """The loop's state at step 0. Each rank draws its own noise; rank 0's draws are a
    single-process run's."""
    cfg = job.train
    optimizer = make_optimizer(cfg, named)
    return LoopState(
        weights=named, optimizer=optimizer, lr_scheduler=make_lr_scheduler(cfg, optimizer),
        scaler=torch.amp.GradScaler(device.type, enabled=weight_dtype == torch.float16),
        generator=torch.Generator(device).manual_seed(job.seed + 1_000_003 * world.rank),
        order=DataOrder(data.train.buckets, cfg.batch_size, job.seed, repeats=cfg.repeats),
        callbacks=CallbackList(callbacks), dataset_hash=data.dataset_hash,
        config_hash=ckpt.config_hash(cfg, base_ref=job.base_ref, family=job.family, seed=job.seed,
                                     world_size=world.size))


def resume(state: LoopState, job: TrainJob, world: World) -> int | None:
    """Continue from the latest checkpoint (weights, optimizer, schedule, random states, data
    position), after checking it was made from this dataset and these settings; returns its
    step, or ``None`` for a fresh start."""
    cfg = job.train
    latest = ckpt.latest_checkpoint(job.checkpoint_dir) if job.checkpoint_dir and cfg.resume else None
    if latest is None:
        return None
    weights, saved = ckpt.load_checkpoint(latest)
    ckpt.check_compatible(latest, saved, state.dataset_hash, state.config_hash, cfg.force_resume)
    state.load_weights(weights)
    state.load_state_dict(saved, world)
    log.info("resuming from %s (step %d of %d)", latest, state.step, cfg.max_steps)
    return state.step


def restore_best(state: LoopState, checkpoint_dir: Path | None) -> None:
    """Load the best checkpoint's weights (and its validation loss), when there is one."""
    best = Path(checkpoint_dir) / ckpt.BEST if checkpoint_dir else None
    if best is None or not (best / ckpt.STATE).is_file():
        return
    weights, saved = ckpt.load_checkpoint(best)
    state.load_weights(weights)
    state.val_loss = saved["val_loss"]
    log.warning("restored the best checkpoint (step %s)", saved["best_step"])
