"""The LoRA training loop: a frozen diffusion pipeline, a PEFT LoRA on its UNet, one loop.

The loop follows diffusers' ``train_text_to_image_lora.py`` step for step (VAE latents, seeded
noise and timesteps, the scheduler's forward process, epsilon or velocity target, MSE) so a
reader who knows that script can audit this one. It is written with plain torch instead of
``accelerate``: the factory trains on one device, and ``accelerate``'s process-global state
gets in the way when a flow (or a test session) trains several adapters in one process.

Reproducibility: every random draw (LoRA init, data order, VAE sampling, noise, timesteps)
comes from ``seed``, so two CPU runs with the same inputs save identical tensors.

Later additions (aspect buckets, latent/text caches, callbacks, checkpoints and resume, kohya
export) hang off the marked places: the dataset/loader, ``encode_captions``, ``on_step`` and
``save_lora``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from lora_factory.config import TrainConfig
from lora_factory.errors import StageError

from .dataset import CaptionedImageDataset, collate

log = logging.getLogger(__name__)

LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
TRAINING_ARGS_NAME = "training_args.json"
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


def make_optimizer(cfg: TrainConfig, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """AdamW, or bitsandbytes' 8-bit AdamW (imported only when asked for: it is CUDA-minded and
    prints kernel warnings at import time)."""
    kwargs: dict[str, Any] = {"lr": cfg.learning_rate, "betas": (0.9, 0.999), "weight_decay": 1e-2,
                              "eps": 1e-8}
    if cfg.optimizer == "adamw8bit":
        try:
            import bitsandbytes as bnb
        except ImportError as e:
            raise StageError(f"train.optimizer 'adamw8bit' needs bitsandbytes ({e}); use 'adamw'") from e
        return bnb.optim.AdamW8bit(params, **kwargs)
    return torch.optim.AdamW(params, **kwargs)


def make_lr_scheduler(cfg: TrainConfig, optimizer: torch.optim.Optimizer) -> Any:
    """diffusers' schedule by name. ``constant`` with warmup steps becomes
    ``constant_with_warmup``: diffusers' ``constant`` silently ignores the warmup, which is never
    what a profile that sets ``lr_warmup_steps`` means."""
    from diffusers.optimization import get_scheduler

    name = cfg.lr_scheduler
    if name == "constant" and cfg.lr_warmup_steps > 0:
        name = "constant_with_warmup"
    return get_scheduler(name, optimizer=optimizer, num_warmup_steps=cfg.lr_warmup_steps,
                         num_training_steps=cfg.max_steps)


def _tokenize(tokenizer: Any, encoder: Any, captions: list[str], device: torch.device) -> torch.Tensor:
    # A tokenizer saved without model_max_length reports 1e30; the encoder's positions are the cap.
    max_length = min(int(tokenizer.model_max_length), encoder.config.max_position_embeddings)
    return tokenizer(captions, padding="max_length", max_length=max_length, truncation=True,
                     return_tensors="pt").input_ids.to(device)


def encode_captions(
    pipe: Any, family: str, batch: dict[str, Any], resolution: int, device: torch.device
) -> tuple[torch.Tensor, dict[str, torch.Tensor] | None]:
    """The UNet's text conditioning for a batch: ``encoder_hidden_states`` and, for SDXL, the
    ``added_cond_kwargs`` (pooled text embeds + size/crop time ids).

    Mirrors the pipelines' ``encode_prompt`` so training and inference condition the same way:
    SD1.5 uses the text encoder's last hidden state; SDXL concatenates both encoders' penultimate
    hidden states and takes the pooled projection from the second.
    """
    captions = batch["captions"]
    with torch.no_grad():
        if family == "sd15":
            ids = _tokenize(pipe.tokenizer, pipe.text_encoder, captions, device)
            return pipe.text_encoder(ids, return_dict=False)[0], None
        hidden, pooled = [], None
        for tokenizer, encoder in ((pipe.tokenizer, pipe.text_encoder),
                                   (pipe.tokenizer_2, pipe.text_encoder_2)):
            out = encoder(_tokenize(tokenizer, encoder, captions, device), output_hidden_states=True)
            pooled = out[0]  # the last encoder's (CLIPTextModelWithProjection) text_embeds
            hidden.append(out.hidden_states[-2])
        prompt_embeds = torch.cat(hidden, dim=-1)
        target = torch.tensor([resolution, resolution], dtype=torch.long).expand(len(captions), 2)
        time_ids = torch.cat([batch["original_sizes"], batch["crop_top_lefts"], target], dim=1)
        added = {"text_embeds": pooled, "time_ids": time_ids.to(device, dtype=prompt_embeds.dtype)}
        return prompt_embeds, added


def _forever(loader: DataLoader) -> Iterator[dict[str, Any]]:
    """Epoch after epoch: training length is counted in optimizer steps, not epochs."""
    while True:
        yield from loader


def add_unet_lora(unet: torch.nn.Module, cfg: TrainConfig, seed: int) -> list[torch.nn.Parameter]:
    """Inject the LoRA and return its (only trainable) parameters, in fp32.

    PEFT's gaussian init draws from torch's global generator, so the injection runs under a
    forked, seeded generator: reproducible, and the caller's random state is left alone.
    ``lora_B`` starts at zero, so the adapter starts as a no-op.
    """
    from diffusers.training_utils import cast_training_params
    from peft import LoraConfig

    lora_config = LoraConfig(
        r=cfg.rank,
        lora_alpha=cfg.alpha or cfg.rank,
        init_lora_weights="gaussian",
        target_modules=list(cfg.target_modules),
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            unet.add_adapter(lora_config)
        except ValueError as e:  # PEFT: "Target modules {...} not found in the base model"
            raise StageError(f"train.target_modules {cfg.target_modules} do not fit the UNet: "
                             f"{e}") from e
    cast_training_params(unet, dtype=torch.float32)
    return [p for p in unet.parameters() if p.requires_grad]


def save_lora(pipe: Any, out_dir: Path) -> Path:
    """``pytorch_lora_weights.safetensors`` in diffusers format, via the pipeline class's own
    ``save_lora_weights`` so ``load_lora_weights`` on the same class reads it back.

    The PEFT config travels in the file's metadata: without it diffusers assumes
    ``alpha == rank`` on load, and an adapter trained with another alpha would load at the
    wrong strength.
    """
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    unet = pipe.unet
    state = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in state.items()}
    type(pipe).save_lora_weights(
        save_directory=out_dir,
        unet_lora_layers=state,
        unet_lora_adapter_metadata=unet.peft_config["default"].to_dict(),
        safe_serialization=True,
    )
    return out_dir / LORA_WEIGHT_NAME


def _write_training_args(out_dir: Path, args: dict[str, Any]) -> None:
    import diffusers
    import peft

    args = {**args, "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__,
                                 "peft": peft.__version__}}
    (out_dir / TRAINING_ARGS_NAME).write_text(json.dumps(args, indent=2, default=str) + "\n")


def train_lora(
    base_ref: str,
    family: str,
    dataset_dir: Path,
    cfg: TrainConfig,
    out_dir: Path,
    cache_dir: Path,
    seed: int,
    on_step: OnStep | None = None,
) -> TrainResult:
    """Train a UNet LoRA on ``dataset_dir`` and save it (diffusers format) to ``out_dir``.

    ``on_step(step, {"loss", "lr", "grad_norm"})`` is called every ``cfg.log_every`` optimizer
    steps. A non-finite loss stops the run with a ``StageError`` naming the step.
    """
    from diffusers import DDPMScheduler
    from tqdm.auto import tqdm

    from lora_factory.models import load_pipeline

    if family not in FAMILIES:
        raise StageError(f"unknown base model family {family!r}; expected one of {FAMILIES}")
    started = time.perf_counter()
    out_dir = Path(out_dir)
    device = resolve_device(cfg.device)
    weight_dtype = weight_dtype_for(cfg.mixed_precision, device)

    # Data. (Aspect buckets and latent caches replace this block.)
    dataset = CaptionedImageDataset(dataset_dir, cfg.resolution)
    if dataset.upscaled:
        log.warning("%d of %d training images are smaller than %d px and were upscaled",
                    dataset.upscaled, len(dataset), cfg.resolution)
    loader = DataLoader(dataset, batch_size=cfg.batch_size, shuffle=True, collate_fn=collate,
                        generator=torch.Generator().manual_seed(seed), num_workers=0)

    # Models: everything frozen, then a LoRA on the UNet is the only trainable part.
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
    params = add_unet_lora(unet, cfg, seed)
    unet.train()

    optimizer = make_optimizer(cfg, params)
    lr_scheduler = make_lr_scheduler(cfg, optimizer)
    use_amp = weight_dtype != torch.float32
    scaler = torch.amp.GradScaler(device.type, enabled=weight_dtype == torch.float16)
    generator = torch.Generator(device).manual_seed(seed)
    prediction_type = noise_scheduler.config.prediction_type
    if prediction_type not in ("epsilon", "v_prediction"):
        raise StageError(f"the base model's scheduler predicts {prediction_type!r}; "
                         "training supports 'epsilon' and 'v_prediction'")

    losses: list[float] = []
    batches = _forever(loader)
    accum = cfg.gradient_accumulation_steps
    progress = tqdm(total=cfg.max_steps, desc="train", unit="step", disable=None)
    for step in range(1, cfg.max_steps + 1):
        optimizer.zero_grad(set_to_none=True)
        step_loss = 0.0
        for _ in range(accum):
            batch = next(batches)
            with torch.no_grad():
                pixels = batch["pixel_values"].to(device, dtype=torch.float32)
                latents = vae.encode(pixels).latent_dist.sample(generator=generator)
                latents = (latents * vae.config.scaling_factor).to(weight_dtype)
            hidden_states, added_cond = encode_captions(pipe, family, batch, cfg.resolution, device)

            noise = torch.randn(latents.shape, generator=generator, device=device, dtype=latents.dtype)
            timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps,
                                      (latents.shape[0],), generator=generator, device=device).long()
            noisy_latents = noise_scheduler.add_noise(latents, noise, timesteps)
            if prediction_type == "epsilon":
                target = noise
            else:
                target = noise_scheduler.get_velocity(latents, noise, timesteps)

            with torch.autocast(device.type, dtype=weight_dtype, enabled=use_amp):
                model_pred = unet(noisy_latents, timesteps, hidden_states,
                                  added_cond_kwargs=added_cond, return_dict=False)[0]
            loss = F.mse_loss(model_pred.float(), target.float(), reduction="mean")
            if not torch.isfinite(loss):
                raise StageError(
                    f"training diverged at step {step}: the loss is {loss.item()}; lower "
                    f"train.learning_rate (now {cfg.learning_rate:g}) or turn off mixed precision"
                )
            scaler.scale(loss / accum).backward()
            step_loss += loss.item() / accum

        scaler.unscale_(optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        lr = lr_scheduler.get_last_lr()[0]
        scaler.step(optimizer)
        scaler.update()
        lr_scheduler.step()

        losses.append(step_loss)
        progress.update(1)
        progress.set_postfix(loss=f"{step_loss:.4f}")
        if on_step is not None and step % cfg.log_every == 0:
            on_step(step, {"loss": step_loss, "lr": float(lr), "grad_norm": float(grad_norm)})
    progress.close()

    # Save. (Checkpoints, kohya export and the model card join here.)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_lora(pipe, out_dir)
    _write_training_args(out_dir, {
        "base_ref": base_ref, "family": family, "dataset_dir": str(dataset_dir), "seed": seed,
        "num_images": len(dataset), "device": str(device), "steps": len(losses),
        "final_loss": losses[-1], "train": cfg.model_dump(),
    })
    seconds = time.perf_counter() - started
    return TrainResult(lora_dir=out_dir, steps=len(losses), final_loss=losses[-1], losses=losses,
                       seconds=seconds)

