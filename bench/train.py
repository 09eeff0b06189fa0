"""Trainer overhead vs a bare diffusers + PEFT loop, and epoch time with vs without the latent
cache, measured in one process; prints JSON.

Models: ``tiny:sd``, and a mid-size SD1.5 layout — the real UNet block layout (3 cross-attention
down blocks + 1 plain, 2 layers per block, 8 heads) at 1/5 of SD1.5's width, and the real VAE
layout (4 blocks, 2 layers each) at 1/4 of its width — so the numbers mean something beyond the
tiny model.

Overhead: both loops train the same LoRA (rank 4, to_q/k/v/out) with the same batch, square data
(bucketing off, as the bare loop has none), optimizer and seed, our trainer with its cache off.
Each loop runs ``STEPS`` optimizer steps; the first is a warm-up and is not timed; the two loops
alternate five times so neither gains from running second on a shared machine. Target: ≤ 10 %.

Latent cache: one epoch of the mid-size model over photo-sized JPEGs (768x512, the decode and
resize are part of what the cache saves): once cold (filling the cache), then with the cache off
and warm, alternating, compared by their medians. Target: warm ≥ 1.5x faster than off.

GPU targets (not measurable on a CPU machine; see the README): SD1.5 rank 16, 512 px,
batch 1: ≤ 0.18 s/step on an H100; SDXL 1024 px fits in 12 GB with gradient checkpointing and
8-bit AdamW.
"""

from __future__ import annotations

import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lora_factory.config import TrainConfig  # noqa: E402
from lora_factory.models import load_pipeline  # noqa: E402
from tests.test_training import write_dataset  # noqa: E402
from training.callbacks import Callback, TrainState  # noqa: E402
from training.conditioning import encode_text  # noqa: E402
from training.dataset import CaptionedImageDataset, DataOrder, collate  # noqa: E402
from training.lora import add_unet_lora  # noqa: E402
from training.trainer import train_lora  # noqa: E402

STEPS = 10
REPEATS = 3  # alternations of the latent-cache epochs
OVERHEAD_REPEATS = 5  # alternations of the two loops


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


def bare_loop(ref: str, cache: Path, dataset_dir: Path, cfg: TrainConfig, seed: int) -> list[float]:
    """diffusers' train_text_to_image_lora step, nothing else: seconds per optimizer step."""
    from diffusers import DDPMScheduler

    pipe = load_pipeline(ref, "sd15", cache)
    for m in pipe.components.values():
        if isinstance(m, torch.nn.Module):
            m.requires_grad_(False)
    vae, unet = pipe.vae, pipe.unet
    sched = DDPMScheduler.from_config(pipe.scheduler.config)
    params = add_unet_lora(unet, cfg, seed)
    unet.train()
    opt = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=1e-2)
    ds = CaptionedImageDataset(dataset_dir, cfg.resolution)
    order = DataOrder(len(ds), cfg.batch_size, seed)
    gen = torch.Generator().manual_seed(seed)
    times = []
    for _ in range(STEPS):
        t0 = time.perf_counter()
        batch = collate([ds[d.index] for d in order.next_batch()])
        with torch.no_grad():
            latents = vae.encode(batch["pixel_values"]).latent_dist.sample(generator=gen)
            latents = latents * vae.config.scaling_factor
        with torch.no_grad():
            hidden, _ = encode_text(pipe, "sd15", batch["captions"], torch.device("cpu"))
        noise = torch.randn(latents.shape, generator=gen)
        t = torch.randint(0, sched.config.num_train_timesteps, (latents.shape[0],), generator=gen)
        pred = unet(sched.add_noise(latents, noise, t), t, hidden).sample
        loss = F.mse_loss(pred, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        opt.step()
        times.append(time.perf_counter() - t0)
    return times[1:]


def ours(ref: str, cache: Path, dataset_dir: Path, cfg: TrainConfig, seed: int, out: Path) -> list[float]:
    """Wall time between consecutive ``on_step`` calls: the whole loop iteration (data, forward,
    backward, guards, metrics, callbacks), the first step being the warm-up."""
    stamps: list[float] = []
    train_lora(ref, "sd15", dataset_dir, cfg, out, cache, seed,
               on_step=lambda _s, _m: stamps.append(time.perf_counter()))
    return [b - a for a, b in zip(stamps, stamps[1:], strict=False)]


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


class _Clock(Callback):
    """Wall time from the loop's start to its last step (model loading and saving excluded)."""

    def __init__(self) -> None:
        self.start = self.end = 0.0

    def on_train_start(self, state: TrainState) -> None:
        self.start = time.perf_counter()

    def on_step(self, state: TrainState, metrics: dict[str, float]) -> None:
        self.end = time.perf_counter()


def epoch_seconds(ref: str, cache: Path, dataset_dir: Path, cfg: TrainConfig, out: Path,
                  feature_cache: Path | None) -> float:
    clock = _Clock()
    train_lora(ref, "sd15", dataset_dir, cfg, out, cache, 0, feature_cache_dir=feature_cache,
               callbacks=[clock])
    return clock.end - clock.start


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


def main() -> None:
    torch.set_num_threads(max(1, torch.get_num_threads()))
    figures: dict[str, object] = {"torch_threads": torch.get_num_threads(), "steps_timed": STEPS - 1}
    with tempfile.TemporaryDirectory(prefix="lf-bench-") as tmp:
        tmp_path = Path(tmp)
        cache = tmp_path / "models"
        cache.mkdir()
        dataset_dir = write_dataset(tmp_path / "ds", [(160, 128), (128, 160), (128, 128), (144, 128)])
        models = {"tiny": ("tiny:sd", 64),
                  "midsize_sd15_layout": (str(build_midsize(cache, tmp_path / "midsize")), 128)}
        for name, (ref, res) in models.items():
            cfg = TrainConfig(resolution=res, rank=4, learning_rate=1e-4, batch_size=2,
                              max_steps=STEPS, device="cpu", export_kohya=False, aspect_buckets=False)
            # Alternate twice so neither loop benefits from running second on a shared machine.
            runs = {"ours": [], "bare": []}
            for rep in range(OVERHEAD_REPEATS):
                runs["bare"] += bare_loop(ref, cache, dataset_dir, cfg, seed=rep)
                runs["ours"] += ours(ref, cache, dataset_dir, cfg, rep, tmp_path / f"{name}-{rep}")
            med = {k: sorted(v)[len(v) // 2] for k, v in runs.items()}
            figures[name] = {
                "resolution": res, "batch_size": 2,
                "unet_params_m": round(sum(p.numel() for p in load_pipeline(ref, "sd15", cache)
                                           .unet.parameters()) / 1e6, 2),
                "s_per_step_ours_median": round(med["ours"], 4),
                "s_per_step_bare_median": round(med["bare"], 4),
                "overhead_pct": round(100 * (med["ours"] / med["bare"] - 1), 1),
                # Fastest step of each: the least disturbed by other load on a shared machine.
                "overhead_pct_fastest_steps": round(100 * (min(runs["ours"]) / min(runs["bare"]) - 1), 1),
                "target_overhead_pct": 10,
            }
        figures["latent_cache"] = latent_cache_figures(models["midsize_sd15_layout"][0], cache, tmp_path)
    figures["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
