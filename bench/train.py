"""Trainer overhead vs a bare diffusers + PEFT loop, and epoch time with vs without the latent
cache, measured in one process; prints JSON.

Models: ``tiny:sd``, and a mid-size SD1.5 layout — the real UNet block layout (3 cross-attention
down blocks + 1 plain, 2 layers per block, 8 heads) at 1/5 of SD1.5's width, and the real VAE
layout (4 blocks, 2 layers each) at 1/4 of its width — so the numbers mean something beyond the
tiny model.

Overhead: three loops train the same LoRA (rank 4, to_q/k/v/out) with the same batch, square data
(bucketing off, as the bare loops have none), optimizer and seed:

- ``bare``: diffusers' ``train_text_to_image_lora.py`` step, which decodes the images and runs the
  VAE and the text encoder every step;
- ``bare_in_memory``: the same step with the VAE's latent distributions and the text embeddings
  computed once before the loop and kept in memory — the model's own work and nothing else;
- ``ours``: ``train_lora`` with a warm feature cache (filled by one run before), logging every
  ``LOG_EVERY`` steps as a real run does.

``tiny_flux`` and ``midsize_flux_layout`` (FLUX.1's block layout, 4 + 8 blocks of width 384): the
same three loops on Flux, the bare step being what diffusers' ``train_dreambooth_lora_flux.py``
does per step (``_BareFlux``: logit-normal timesteps looked up by ``get_sigmas``, packed latents
and image ids, guidance 1.0, flow-matching target ``noise - latents``, the constant LR schedule's
step and the per-step ``loss.item()`` log). Target: ours ≤ 10 % over ``bare_in_memory``.

Each loop runs ``STEPS`` optimizer steps; the first is a warm-up and is not timed; the loops
alternate ``OVERHEAD_REPEATS`` times so none gains from running last on a shared machine, and the
medians are compared. Each step is timed on the wall clock and on the process's CPU clock: on a
loaded machine a step's wall time swings with the other processes' share of the cores (a 6 ms
tiny-Flux step measured 10 % over in one run and 36 % in the next), its CPU time much less, so the
headline ``overhead_pct_vs_bare_in_memory_cpu`` compares CPU-time medians (the loops run on one
torch thread, so CPU time is the step's own work), beside the median of the per-repeat ratios
(``_paired``) and the wall-time figures; ``_interleaved``: each of our steps is followed by one
bare in-memory step in the same loop (a callback), and the median of the per-pair ratios is taken,
so the two sides of a ratio run ~20 ms apart under the same load. Targets: ours ≤ 3 % over ``bare_in_memory``, and faster
than ``bare``. The figures carry the load average: on a shared machine, read them with it.
``BENCH_ONLY=tiny_flux,midsize_flux_layout`` runs only the named figures; ``BENCH_STEPS`` and
``BENCH_REPEATS`` set the steps per loop (12) and the alternations (5).

Latent cache: one epoch of the mid-size model over photo-sized JPEGs (768x512, the decode and
resize are part of what the cache saves): once cold (filling the cache), then with the cache off
and warm, alternating, compared by their medians. Target: warm ≥ 1.5x faster than off.

GPU targets (not measurable on a CPU machine; see the README): SD1.5 rank 16, 512 px,
batch 1: ≤ 0.18 s/step on an H100; SDXL 1024 px fits in 12 GB with gradient checkpointing and
8-bit AdamW.
"""

from __future__ import annotations

import functools
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lora_factory.config import TrainConfig  # noqa: E402
from lora_factory.models import load_pipeline  # noqa: E402
from tests.training_helpers import tiny_job, write_dataset  # noqa: E402
from training.callbacks import Callback, TrainState  # noqa: E402
from training.dataset import CaptionedImageDataset, DataOrder, collate  # noqa: E402
from training.families import family_for  # noqa: E402
from training.lora import add_denoiser_lora  # noqa: E402
from training.trainer import train_lora  # noqa: E402

# BENCH_STEPS / BENCH_REPEATS: more steps and alternations for a tighter median (a tiny-Flux step
# takes ~10 ms, so 40 steps x 9 repeats adds seconds, not minutes).
STEPS = int(os.environ.get("BENCH_STEPS", "12"))
LOG_EVERY = 5
REPEATS = 3  # alternations of the latent-cache epochs
OVERHEAD_REPEATS = int(os.environ.get("BENCH_REPEATS", "5"))  # alternations of the three loops
CPU = torch.device("cpu")
# The overhead loops run on one torch thread unless told: on a shared machine a multi-threaded op
# waits for its descheduled threads, and a small model's step time then swings tenfold between
# runs. The loop's overhead is per-step host work; BENCH_THREADS=N measures with N threads. The
# latent-cache epochs keep torch's default threads (the cache saves single-threaded JPEG decoding
# next to multi-threaded VAE work, so the thread count is part of that figure).
THREADS = int(os.environ.get("BENCH_THREADS", "1"))
# BENCH_ONLY=tiny_flux,latent_cache: only these figures (names as in the JSON); all by default.
ONLY = [n for n in os.environ.get("BENCH_ONLY", "").split(",") if n]


def build_midsize(cache: Path, out: Path) -> Path:
    """tiny:sd with its UNet and VAE replaced by SD1.5's layouts at reduced width."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    pipe = load_pipeline("tiny:sd", "sd15", cache)
    torch.manual_seed(0)
    pipe.unet = UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=(64, 128, 256, 256),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=pipe.text_encoder.config.hidden_size, attention_head_dim=8,
        norm_num_groups=32)
    torch.manual_seed(1)
    pipe.vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
        block_out_channels=(32, 64, 128, 128), down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=32, scaling_factor=0.18215)
    pipe.register_modules(unet=pipe.unet, vae=pipe.vae)
    pipe.save_pretrained(out, safe_serialization=True)
    return out


def build_midsize_flux(cache: Path, out: Path) -> Path:
    """tiny:flux with its transformer replaced by FLUX.1's block layout at reduced size: 4 double-
    and 8 single-stream blocks (FLUX.1: 19 and 38), 6 heads of 64 (FLUX.1: 24 of 128)."""
    from diffusers import FluxTransformer2DModel

    pipe = load_pipeline("tiny:flux", "flux", cache)
    torch.manual_seed(0)
    pipe.transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=64, num_layers=4, num_single_layers=8, attention_head_dim=64,
        num_attention_heads=6, joint_attention_dim=pipe.transformer.config.joint_attention_dim,
        pooled_projection_dim=pipe.transformer.config.pooled_projection_dim, guidance_embeds=True,
        axes_dims_rope=(8, 28, 28))
    pipe.register_modules(transformer=pipe.transformer)
    pipe.save_pretrained(out, safe_serialization=True)
    return out


class _Bare:
    """diffusers' training step, nothing else (no guards, metrics or callbacks)."""

    family = "sd15"

    def __init__(self, ref: str, cache: Path, cfg: TrainConfig, seed: int) -> None:
        self.pipe = load_pipeline(ref, self.family, cache)
        for m in self.pipe.components.values():
            if isinstance(m, torch.nn.Module):
                m.requires_grad_(False)
        self.sched = self.scheduler()
        self.denoiser = self.pipe.unet if self.family == "sd15" else self.pipe.transformer
        self.params = add_denoiser_lora(self.denoiser, cfg, seed, family_for(self.family).default_targets)
        self.denoiser.train()
        self.opt = torch.optim.AdamW(self.params, lr=cfg.learning_rate, weight_decay=1e-2)
        self.max_grad_norm = cfg.max_grad_norm
        self.gen = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)  # the flux script samples timesteps from the global generator

    def scheduler(self) -> Any:
        from diffusers import DDPMScheduler

        return DDPMScheduler.from_config(self.pipe.scheduler.config)

    def update(self, loss: torch.Tensor) -> None:
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, self.max_grad_norm)
        self.opt.step()

    def encode(self, pixels: torch.Tensor, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(VAE distribution parameters, text embeddings)."""
        with torch.no_grad():
            moments = self.pipe.vae.encode(pixels).latent_dist.parameters
            hidden = family_for("sd15").encode_prompt(self.pipe, captions, CPU)["hidden"]
        return moments, hidden

    def step(self, moments: torch.Tensor, hidden: torch.Tensor) -> None:
        from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

        latents = DiagonalGaussianDistribution(moments).sample(generator=self.gen)
        latents = latents * self.pipe.vae.config.scaling_factor
        noise = torch.randn(latents.shape, generator=self.gen)
        t = torch.randint(0, self.sched.config.num_train_timesteps, (latents.shape[0],), generator=self.gen)
        pred = self.pipe.unet(self.sched.add_noise(latents, noise, t), t, hidden).sample
        self.update(F.mse_loss(pred, noise))


class _BareFlux(_Bare):
    """The step of diffusers' ``train_dreambooth_lora_flux.py`` (text encoders frozen, latents
    cached, no prior preservation), everything its loop does per step and nothing else: the
    timestep's sigma looked up by ``get_sigmas`` (a ``nonzero().item()`` per sample), the constant
    LR schedule's step, clipping over ``transformer.parameters()``, and the per-step log
    (``loss.item()``, the LR) on the progress bar. ``weighting_scheme="logit_normal"`` (a script
    option; its default "none" draws ``u`` uniformly): the sampling closest to ours, which adds
    the scheduler's resolution shift. The progress bar is shown as ours is (only on a terminal);
    the tracker call (``accelerator.log``) is left out, as ours logs to a no-op sink."""

    family = "flux"

    def __init__(self, ref: str, cache: Path, cfg: TrainConfig, seed: int) -> None:
        from diffusers.optimization import get_scheduler
        from tqdm.auto import tqdm

        super().__init__(ref, cache, cfg, seed)
        self.lr_scheduler = get_scheduler("constant", optimizer=self.opt)
        self.progress = tqdm(total=STEPS, desc="Steps", disable=None)

    def scheduler(self) -> Any:
        from diffusers import FlowMatchEulerDiscreteScheduler

        return FlowMatchEulerDiscreteScheduler.from_config(self.pipe.scheduler.config)

    def encode(self, pixels: torch.Tensor, captions: list[str]) -> tuple[torch.Tensor, Any]:
        """(VAE distribution parameters, (T5 embeddings, CLIP pooled, text ids))."""
        with torch.no_grad():
            moments = self.pipe.vae.encode(pixels).latent_dist.parameters
            prompt = self.pipe.encode_prompt(prompt=captions, prompt_2=None, device=CPU,
                                             max_sequence_length=family_for("flux").max_sequence_length(self.pipe))
        return moments, prompt

    def sigmas(self, timesteps: torch.Tensor) -> torch.Tensor:
        """The script's ``get_sigmas``: each timestep's index in the schedule, found on the host."""
        schedule = self.sched.timesteps
        indices = [(schedule == t).nonzero().item() for t in timesteps]
        return self.sched.sigmas[indices].flatten().view(-1, 1, 1, 1)

    def step(self, moments: torch.Tensor, prompt: Any) -> None:
        from diffusers import FluxPipeline
        from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
        from diffusers.training_utils import (
            compute_density_for_timestep_sampling,
            compute_loss_weighting_for_sd3,
        )

        hidden, pooled, text_ids = prompt
        vae = self.pipe.vae.config
        latents = DiagonalGaussianDistribution(moments).sample(generator=self.gen)
        latents = (latents - vae.shift_factor) * vae.scaling_factor
        noise = torch.randn(latents.shape, generator=self.gen)
        b, c, h, w = latents.shape
        u = compute_density_for_timestep_sampling(weighting_scheme="logit_normal", batch_size=b, logit_mean=0.0,
                                                  logit_std=1.0, mode_scale=1.29)
        indices = (u * self.sched.config.num_train_timesteps).long()
        timesteps = self.sched.timesteps[indices]
        sigmas = self.sigmas(timesteps)
        noisy = (1.0 - sigmas) * latents + sigmas * noise
        guidance = torch.tensor([1.0]).expand(b) if self.denoiser.config.guidance_embeds else None
        pred = self.denoiser(hidden_states=FluxPipeline._pack_latents(noisy, b, c, h, w), timestep=timesteps / 1000,
                             guidance=guidance, pooled_projections=pooled, encoder_hidden_states=hidden,
                             txt_ids=text_ids, img_ids=FluxPipeline._prepare_latent_image_ids(b, h // 2, w // 2, CPU,
                                                                                                latents.dtype),
                             return_dict=False)[0]
        scale = 2 ** (len(vae.block_out_channels) - 1)
        pred = FluxPipeline._unpack_latents(pred, h * scale, w * scale, scale)
        weighting = compute_loss_weighting_for_sd3(weighting_scheme="logit_normal", sigmas=sigmas)
        target = noise - latents
        loss = torch.mean((weighting.float() * (pred.float() - target.float()) ** 2).reshape(b, -1), 1).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.denoiser.parameters(), self.max_grad_norm)
        self.opt.step()
        self.lr_scheduler.step()
        self.opt.zero_grad()
        self.progress.update(1)
        self.progress.set_postfix(loss=loss.detach().item(), lr=self.lr_scheduler.get_last_lr()[0])


def _cat(parts: list[Any]) -> Any:
    """Batch per-image encodings: tensors, or Flux's (T5 embeddings, CLIP pooled, text ids), whose
    text ids depend only on the sequence length and are shared by the batch."""
    if isinstance(parts[0], tuple):
        hidden, pooled, text_ids = zip(*parts, strict=True)
        return torch.cat(hidden), torch.cat(pooled), text_ids[0]
    return torch.cat(parts)


Times = tuple[list[float], list[float]]  # (wall seconds, CPU seconds) of each timed step


def stamp() -> tuple[float, float]:
    """Wall and process CPU clocks. On a loaded machine the wall time of a step grows with the
    other processes' share of the cores; the CPU time is the step's own work."""
    return time.perf_counter(), time.process_time()


class _BareSteps:
    """The bare loop one step at a time, so its steps can also run between ours (``_Interleaved``)."""

    def __init__(self, ref: str, cache: Path, dataset_dir: Path, cfg: TrainConfig, seed: int,
                 in_memory: bool, bare_cls: type[_Bare]) -> None:
        self.bare = bare_cls(ref, cache, cfg, seed)
        self.ds = CaptionedImageDataset(dataset_dir, cfg.resolution)
        self.order = DataOrder(len(self.ds), cfg.batch_size, seed)
        self.encoded = ([self.bare.encode(self.ds[i]["pixel_values"][None], [self.ds.records[i].caption])
                         for i in range(len(self.ds))] if in_memory else [])

    def step(self) -> None:
        indices = [d.index for d in self.order.next_batch()]
        if self.encoded:
            moments = torch.cat([self.encoded[i][0] for i in indices])
            hidden = _cat([self.encoded[i][1] for i in indices])
        else:
            batch = collate([self.ds[i] for i in indices])
            moments, hidden = self.bare.encode(batch["pixel_values"], batch["captions"])
        self.bare.step(moments, hidden)


def bare_loop(ref: str, cache: Path, dataset_dir: Path, cfg: TrainConfig, seed: int,
              in_memory: bool, bare_cls: type[_Bare] = _Bare) -> Times:
    """Seconds per optimizer step of the bare step: encoding every step, or (``in_memory``)
    from latents and embeddings encoded once before the loop."""
    steps = _BareSteps(ref, cache, dataset_dir, cfg, seed, in_memory, bare_cls)
    stamps = [stamp()]
    for _ in range(STEPS):
        steps.step()
        stamps.append(stamp())
    return _deltas(stamps[1:])


def _deltas(stamps: list[tuple[float, float]]) -> Times:
    """Per-step wall and CPU seconds between consecutive stamps."""
    pairs = list(zip(stamps, stamps[1:], strict=False))
    return [b[0] - a[0] for a, b in pairs], [b[1] - a[1] for a, b in pairs]


class _Clock(Callback):
    """Wall time of each step (between consecutive ``on_step`` calls, so the data, guards,
    metrics and callbacks count), and from the loop's start to its last step."""

    def __init__(self) -> None:
        self.stamps: list[tuple[float, float]] = []
        self.start = 0.0

    def on_train_start(self, state: TrainState) -> None:
        self.start = time.perf_counter()

    def on_step(self, state: TrainState, metrics: dict[str, float]) -> None:
        self.stamps.append(stamp())

    def step_times(self) -> Times:
        return _deltas(self.stamps)


class _Interleaved(_Clock):
    """One in-memory bare step right after each of ours, timed apart: each pair of steps runs
    within ~20 ms of each other, so a change in the machine's load weighs on both sides of the
    pair's ratio (alternating whole loops leaves seconds between the two sides). The first pair
    is the warm-up."""

    def __init__(self, bare: _BareSteps) -> None:
        super().__init__()
        self.bare = bare
        self.last: tuple[float, float] | None = None  # the end of the previous bare step
        self.ours: list[tuple[float, float]] = []  # (wall, CPU) seconds of each timed step
        self.bares: list[tuple[float, float]] = []

    def on_step(self, state: TrainState, metrics: dict[str, float]) -> None:
        ours_end = stamp()
        self.bare.step()
        bare_end = stamp()
        if self.last is not None:
            self.ours.append((ours_end[0] - self.last[0], ours_end[1] - self.last[1]))
            self.bares.append((bare_end[0] - ours_end[0], bare_end[1] - ours_end[1]))
        self.last = bare_end


def interleaved(ref: str, cache: Path, dataset_dir: Path, cfg: TrainConfig, seed: int, out: Path,
                feature_cache: Path, family: str) -> tuple[list[float], list[float]]:
    """Per-pair ratios ours / bare (wall, CPU) of our loop with a bare step after each of its steps."""
    bare_cls = _BareFlux if family == "flux" else _Bare
    clock = _Interleaved(_BareSteps(ref, cache, dataset_dir, cfg, seed, True, bare_cls))
    train_lora(tiny_job(dataset_dir, cfg, out, cache, seed=seed, base_ref=ref, family=family,
                        feature_cache_dir=feature_cache), on_step=lambda step, metrics: None, callbacks=[clock])
    return ([o[0] / b[0] for o, b in zip(clock.ours, clock.bares, strict=True)],
            [o[1] / b[1] for o, b in zip(clock.ours, clock.bares, strict=True)])


def ours(ref: str, cache: Path, dataset_dir: Path, cfg: TrainConfig, seed: int, out: Path,
         feature_cache: Path | None, family: str = "sd15") -> Times:
    """Seconds per step of our loop, the first step being the warm-up; metrics go to a sink
    every ``cfg.log_every`` steps, as in the train task."""
    clock, logged = _Clock(), []
    train_lora(tiny_job(dataset_dir, cfg, out, cache, seed=seed, base_ref=ref, family=family,
                        feature_cache_dir=feature_cache),
               on_step=lambda step, metrics: logged.append((step, metrics)), callbacks=[clock])
    return clock.step_times()


def write_photos(folder: Path, count: int) -> Path:
    """Photo-like 768x512 JPEGs (noise texture, so they compress and decode like photos)."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(count):
        base = rng.integers(0, 255, (3,), dtype=np.uint8)
        noise = rng.normal(0, 40, (512, 768, 3))
        pixels = np.clip(base + noise, 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:03d}.jpg", quality=90)
        rows.append(json.dumps({"file_name": f"{i:03d}.jpg", "text": f"lfstyle, photo {i}"}))
    (folder / "metadata.jsonl").write_text("\n".join(rows) + "\n")
    return folder


def epoch_seconds(ref: str, cache: Path, dataset_dir: Path, cfg: TrainConfig, out: Path,
                  feature_cache: Path | None) -> float:
    clock = _Clock()
    train_lora(tiny_job(dataset_dir, cfg, out, cache, base_ref=ref, feature_cache_dir=feature_cache),
               callbacks=[clock])
    return clock.stamps[-1][0] - clock.start


def latent_cache_figures(ref: str, cache: Path, tmp: Path) -> dict[str, object]:
    """One cold epoch fills the cache; then epochs with the cache off and warm alternate
    ``REPEATS`` times (this machine's speed drifts between runs) and the medians are compared."""
    images, batch = 16, 2
    photos = write_photos(tmp / "photos", images)
    cfg = TrainConfig(resolution=256, rank=4, learning_rate=1e-4, batch_size=batch,
                      max_steps=images // batch, device="cpu", export_kohya=False,
                      cache_text_embeddings=False)
    features = tmp / "features"
    cold = epoch_seconds(ref, cache, photos, cfg, tmp / "cold", features)
    off, warm = [], []
    for rep in range(REPEATS):
        off.append(epoch_seconds(ref, cache, photos, cfg, tmp / f"off{rep}", None))
        warm.append(epoch_seconds(ref, cache, photos, cfg, tmp / f"warm{rep}", features))
    med_off, med_warm = sorted(off)[len(off) // 2], sorted(warm)[len(warm) // 2]
    return {"images": images, "photo_size": "768x512", "resolution": 256, "batch_size": batch,
            "epoch_s_cold_cache": round(cold, 2), "epoch_s_without_cache": [round(x, 2) for x in off],
            "epoch_s_warm_cache": [round(x, 2) for x in warm],
            "speedup_warm_vs_off_median": round(med_off / med_warm, 2), "target_speedup": 1.5}


def median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def _pct(ours: float, bare: float) -> float:
    return round(100 * (ours / bare - 1), 1)


def overhead_figures(name: str, ref: str, res: int, cache: Path, dataset_dir: Path, tmp: Path,
                     family: str = "sd15") -> dict[str, object]:
    """The three loops alternating (see the module docstring); ours with a warm feature cache.
    Headline: the CPU-time medians (the loops' own work, whatever else the machine runs); the
    wall-time medians and the median of the per-repeat ratios (paired, so a slow spell of the
    machine weighs on both sides of one ratio) beside them; and, tighter still on a loaded
    machine, the per-step ratios of our loop with a bare step interleaved after each of its steps."""
    bare_cls = _BareFlux if family == "flux" else _Bare
    cfg = TrainConfig(resolution=res, rank=4, learning_rate=1e-4, batch_size=2, max_steps=STEPS,
                      device="cpu", export_kohya=False, aspect_buckets=False, log_every=LOG_EVERY)
    features = tmp / f"{name}-features"
    ours(ref, cache, dataset_dir, cfg, 0, tmp / f"{name}-fill", features, family)  # fills the cache
    kinds = ("bare", "bare_in_memory", "ours")
    wall: dict[str, list[float]] = {k: [] for k in kinds}
    cpu: dict[str, list[float]] = {k: [] for k in kinds}
    paired: list[float] = []  # ours / bare_in_memory per repeat, CPU medians
    step_pairs: tuple[list[float], list[float]] = ([], [])  # per-step ratios, interleaved (wall, CPU)
    for rep in range(OVERHEAD_REPEATS):
        wall_pairs, cpu_pairs = interleaved(ref, cache, dataset_dir, cfg, rep, tmp / f"{name}-i{rep}", features,
                                            family)
        step_pairs[0].extend(wall_pairs)
        step_pairs[1].extend(cpu_pairs)
        runs = {"bare": functools.partial(bare_loop, ref, cache, dataset_dir, cfg, rep, False, bare_cls),
                "bare_in_memory": functools.partial(bare_loop, ref, cache, dataset_dir, cfg, rep, True, bare_cls),
                "ours": functools.partial(ours, ref, cache, dataset_dir, cfg, rep, tmp / f"{name}-{rep}", features,
                                          family)}
        # The order rotates with the repeat: none of the loops always runs first or last.
        order = [kinds[(i + rep) % len(kinds)] for i in range(len(kinds))]
        times = {k: runs[k]() for k in order}
        for k, (w, c) in times.items():
            wall[k] += w
            cpu[k] += c
        paired.append(median(times["ours"][1]) / median(times["bare_in_memory"][1]))
    med = {k: median(v) for k, v in wall.items()}
    med_cpu = {k: median(v) for k, v in cpu.items()}
    return {
        "resolution": res, "batch_size": 2, "log_every": LOG_EVERY,
        "denoiser_params_m": round(sum(p.numel() for p in bare_cls(ref, cache, cfg, 0).denoiser.parameters())
                                   / 1e6, 2),
        **{f"s_per_step_{k}_median": round(v, 4) for k, v in med.items()},
        **{f"cpu_s_per_step_{k}_median": round(v, 4) for k, v in med_cpu.items()},
        "overhead_pct_vs_bare_in_memory_cpu": _pct(med_cpu["ours"], med_cpu["bare_in_memory"]),
        "overhead_pct_vs_bare_in_memory_cpu_paired": round(100 * (median(paired) - 1), 1),
        "overhead_pct_vs_bare_in_memory": _pct(med["ours"], med["bare_in_memory"]),
        # Each of our steps paired with a bare step run right after it (``_Interleaved``): the
        # median of the per-pair ratios, on the wall and the CPU clocks.
        "overhead_pct_vs_bare_in_memory_interleaved": round(100 * (median(step_pairs[0]) - 1), 1),
        "overhead_pct_vs_bare_in_memory_interleaved_cpu": round(100 * (median(step_pairs[1]) - 1), 1),
        "interleaved_pairs": len(step_pairs[0]),
        "overhead_pct_vs_bare": _pct(med["ours"], med["bare"]),
        # Fastest step of each: the least disturbed by other load on a shared machine.
        "overhead_pct_vs_bare_in_memory_fastest_steps": _pct(min(wall["ours"]), min(wall["bare_in_memory"])),
        "target_overhead_pct": 10 if family == "flux" else 3,
    }


def main() -> None:
    default_threads = torch.get_num_threads()
    figures: dict[str, object] = {"torch_threads_overhead": THREADS, "torch_threads_latent_cache": default_threads,
                                  "steps_timed": STEPS - 1, "overhead_repeats": OVERHEAD_REPEATS,
                                  "load_average_before": [round(x, 2) for x in os.getloadavg()]}
    with tempfile.TemporaryDirectory(prefix="lf-bench-") as tmp:
        tmp_path = Path(tmp)
        cache = tmp_path / "models"
        cache.mkdir()
        dataset_dir = write_dataset(tmp_path / "ds", [(160, 128), (128, 160), (128, 128), (144, 128)])
        midsize = functools.cache(lambda: build_midsize(cache, tmp_path / "midsize"))
        # name -> (reference builder, resolution, family)
        models: dict[str, tuple[Any, int, str]] = {
            "tiny": (lambda: "tiny:sd", 64, "sd15"),
            "midsize_sd15_layout": (lambda: str(midsize()), 128, "sd15"),
            "tiny_flux": (lambda: "tiny:flux", 64, "flux"),
            "midsize_flux_layout": (lambda: str(build_midsize_flux(cache, tmp_path / "midsize-flux")), 64, "flux"),
        }
        chosen = ONLY or [*models, "latent_cache"]
        torch.set_num_threads(THREADS)
        for name in chosen:
            if name in models:
                build, res, family = models[name]
                figures[name] = overhead_figures(name, build(), res, cache, dataset_dir, tmp_path, family)
        torch.set_num_threads(default_threads)
        if "latent_cache" in chosen:
            figures["latent_cache"] = latent_cache_figures(str(midsize()), cache, tmp_path)
    figures["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    figures["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
