"""Benchmarks of the tuner; prints JSON.

- ``memory``: the memory model's estimate of a training step's peak against the measured peak
  of that step on the CPU (the tiny SD1.5 and SDXL UNets and a mid-size SD1.5 layout, several
  resolutions, batches, with and without gradient checkpointing). Each step runs in a fresh
  process, after a warm-up that loads every library. The peak is the memory in use (glibc's
  ``mallinfo2``: handed out and not yet freed) sampled after every aten op of two training
  steps, above what was in use before the model was built: the CPU's counterpart of
  ``torch.cuda.max_memory_allocated``. The resident set's high-water mark (``VmHWM``) is shown
  beside it; it adds the allocator's cache and fragmentation. Target: every error within 15%.
- ``vae``: the VAE encoding transient the model assumes (five first-block feature maps) against
  a measured encode.
- ``published``: the model's estimates beside published VRAM figures for SD1.5 and SDXL LoRA
  training (README's Tuner section shows the table).
- ``retrace``: the SD1.5 and SDXL rows of the family table against a fresh meta-device trace.
- ``history``: seconds to recommend with 1,000 past runs in a SQLite MLflow store (best of 3,
  reading the store included). Target: 2 s.

``python bench/tune.py [--skip-history]``
"""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lora_factory.config import TrainConfig  # noqa: E402
from training.tuner import TuneRequest, TuneStats, estimate, family_row, load_history, recommend  # noqa: E402
from training.tuner.families import GIB, MIB  # noqa: E402
from training.tuner.history import SCORE_METRIC  # noqa: E402

CASES = [  # (model, resolution, batch, gradient checkpointing)
    ("tiny-sd15", 64, 2, False), ("tiny-sd15", 128, 2, False), ("tiny-sdxl", 128, 2, False),
    ("mid", 128, 1, False), ("mid", 256, 1, False), ("mid", 256, 2, False), ("mid", 256, 1, True),
    ("mid", 384, 1, True),
]
TARGET_ERROR = 0.15


def _unet_config(model: str) -> dict[str, Any]:
    from training.tuner.families import denoiser_config
    from training.tuner.trace import MIDSIZE_UNET

    return dict(MIDSIZE_UNET) if model == "mid" else denoiser_config(model)


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(field)


class _MallInfo(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                     "fsmblks", "uordblks", "fordblks", "keepcost")]


def _in_use() -> int:
    """Bytes malloc has handed out and not had back (heap + mmapped), from glibc's mallinfo2."""
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = _MallInfo
    info = libc.mallinfo2()
    return info.uordblks + info.hblkhd


def _peak_mode() -> Any:
    """A dispatch mode that samples the memory in use after every aten op, forward and backward."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Peak(TorchDispatchMode):
        peak = 0

        def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            out = func(*args, **(kwargs or {}))
            self.peak = max(self.peak, _in_use())
            return out

    return Peak()


def child(model: str, resolution: int, batch: int, checkpointing: bool) -> None:
    """One measured training step (run in its own process): prints its peaks in bytes."""
    import torch

    from training.tuner.families import denoiser_config
    from training.tuner.trace import build_unet, unet_inputs

    torch.set_num_threads(1)
    config = _unet_config(model)
    args, kwargs = unet_inputs(config, resolution, batch, torch.float32, "cpu")
    args = tuple(torch.randn_like(a) if a.is_floating_point() else a for a in args)
    # Load every library and code path before the baseline (a throwaway tiny UNet with a LoRA,
    # one step): imported code is not the step's memory.
    warm = build_unet(denoiser_config("tiny-sd15"), 4, ["to_q"], torch.float32, device="cpu")
    warm_args, warm_kwargs = unet_inputs(denoiser_config("tiny-sd15"), 64, 1, torch.float32, "cpu")
    warm(*warm_args, **warm_kwargs).sample.sum().backward()
    torch.optim.AdamW([p for p in warm.parameters() if p.requires_grad]).step()
    del warm, warm_args, warm_kwargs
    rss_before, used_before = _status("VmRSS"), _in_use()
    unet = build_unet(config, 4, ["to_k", "to_q", "to_v", "to_out.0"], torch.float32, device="cpu")
    if checkpointing:
        unet.enable_gradient_checkpointing()
    unet.train()
    optimizer = torch.optim.AdamW([p for p in unet.parameters() if p.requires_grad], lr=1e-4)
    Path("/proc/self/clear_refs").write_text("5")  # the high-water mark restarts after building
    mode = _peak_mode()
    with mode:
        for _ in range(2):  # the second step has the optimizer states too
            loss = unet(*args, **kwargs).sample.float().pow(2).mean()
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    print(json.dumps({"allocated": mode.peak - used_before, "rss": _status("VmHWM") - rss_before}))


def measured_peaks(model: str, resolution: int, batch: int, checkpointing: bool) -> dict[str, int]:
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, __file__, "--child", model, str(resolution), str(batch),
                          str(int(checkpointing))], capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def memory_figures() -> list[dict[str, Any]]:
    """Estimate vs the step's allocated peak (the target) and its resident-set peak (which adds
    the allocator's cache and fragmentation)."""
    from training.tuner.trace import row_for_unet

    rows: dict[str, Any] = {}
    figures = []
    for model, resolution, batch, ckpt in CASES:
        if model not in rows:
            rows[model] = row_for_unet(_unet_config(model), 128, model)
        cfg = TrainConfig(resolution=resolution, batch_size=batch, rank=4, gradient_checkpointing=ckpt,
                          device="cpu", optimizer="adamw")
        est = estimate(cfg, rows[model]).total
        peaks = measured_peaks(model, resolution, batch, ckpt)
        figures.append({"model": model, "resolution": resolution, "batch": batch, "checkpointing": ckpt,
                        "estimated_mib": round(est / MIB, 1), "allocated_mib": round(peaks["allocated"] / MIB, 1),
                        "error": round(est / peaks["allocated"] - 1, 3), "rss_mib": round(peaks["rss"] / MIB, 1),
                        "error_vs_rss": round(est / peaks["rss"] - 1, 3)})
    return figures


def vae_child(resolution: int, channels: int) -> None:
    import torch
    from diffusers import AutoencoderKL

    torch.set_num_threads(1)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
                        block_out_channels=(channels, 2 * channels, 4 * channels, 4 * channels),
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
    image = torch.randn(1, 3, resolution, resolution)
    with torch.no_grad():
        vae.encode(torch.randn(1, 3, 64, 64))
        Path("/proc/self/clear_refs").write_text("5")
        before = _status("VmRSS")
        vae.encode(image).latent_dist.sample()
    print(json.dumps({"peak": _status("VmHWM") - before}))


def vae_figures() -> list[dict[str, Any]]:
    out = []
    for resolution, channels in ((512, 32), (768, 32), (512, 64)):
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": "1"}
        proc = subprocess.run([sys.executable, __file__, "--vae-child", str(resolution), str(channels)],
                              capture_output=True, text=True, env=env, check=True)
        peak = json.loads(proc.stdout.strip().splitlines()[-1])["peak"]
        est = replace(family_row("sd15"), vae_first_channels=channels).vae_encode_bytes(resolution, 1)
        out.append({"resolution": resolution, "first_channels": channels, "measured_mib": round(peak / MIB, 1),
                    "estimated_mib": round(est / MIB, 1), "error": round(est / peak - 1, 3)})
    return out


# Published figures: (source, family, the configuration as published, figure GiB, kind).
# "point": a measured usage; "bound": "fits in" / "needs at least" statements.
PUBLISHED = [
    ("diffusers docs (training/lora, v0.20): SD1.5 LoRA on an RTX 2080 Ti (11 GB)", "sd15",
     dict(resolution=512, rank=4, batch_size=1, mixed_precision="fp16", optimizer="adamw"), 11.0, "upper"),
    ("Ng Wai Foong, How to Fine-tune Stable Diffusion using LoRA (diffusers, batch 2, xformers): 6 GB", "sd15",
     dict(resolution=512, rank=4, batch_size=2, mixed_precision="fp16", optimizer="adamw"), 6.0, "point"),
    ("diffusers PR #4470: SDXL DreamBooth LoRA, 1024 px, checkpointing, 8-bit Adam: under 16 GB", "sdxl",
     dict(resolution=1024, rank=4, batch_size=1, mixed_precision="fp16", optimizer="adamw8bit",
          gradient_checkpointing=True), 16.0, "upper"),
    ("kohya_ss docs/LoRA/top_level.md: SDXL LoRA needs a GPU with at least 12 GB", "sdxl",
     dict(resolution=1024, rank=32, batch_size=1, mixed_precision="bf16", optimizer="adamw8bit",
          gradient_checkpointing=True), 12.0, "lower"),
    ("EasyPhoto wiki: SDXL LoRA rank 32, defaults (not all published), peak 20.22 GB on an A100", "sdxl",
     dict(resolution=1024, rank=32, batch_size=1, mixed_precision="fp16", optimizer="adamw"), 20.22, "point"),
]


def published_figures() -> list[dict[str, Any]]:
    out = []
    for source, family, settings, gb, kind in PUBLISHED:
        est = estimate(TrainConfig(**settings), family_row(family)).total / GIB
        row = {"source": source, "family": family, "settings": settings, "published_gb": gb,
               "estimated_gib": round(est, 2), "kind": kind}
        if kind == "point":
            row["error"] = round(est / gb - 1, 3)
        else:
            row["consistent"] = est <= gb if kind == "upper" else est >= gb * 0.75
        out.append(row)
    return out


def retrace_figures() -> dict[str, Any]:
    import torch

    from training.tuner.families import denoiser_config
    from training.tuner.trace import trace_unet

    out = {}
    for name in ("sd15", "sdxl"):
        row = family_row(name)
        t = trace_unet(denoiser_config(row.architecture), row.resolution, torch.float16)
        out[name] = {"table_mib": round(row.activations[("half", False)] / MIB, 1),
                     "traced_mib": round(t.saved_bytes / MIB, 1),
                     "matches": t.saved_bytes == row.activations[("half", False)]
                     and t.saved_bytes_checkpointed == row.activations[("half", True)]}
    return out


def history_figures(runs: int = 1000) -> dict[str, Any]:
    from lora_factory.tracking import Tracker
    from tasks.tune import tracking_record

    root = Path(tempfile.mkdtemp(prefix="tune-bench-"))
    uri = f"sqlite:///{root / 'mlflow.db'}"
    tracker = Tracker(uri, "lora-factory", root / "mlartifacts")
    base = TuneStats(num_images=40, caption_coverage=0.9, words_mean=12.0, text_diversity=0.6,
                     visual_diversity=0.35, short_side_median=1024.0, domain="photo")
    started = time.perf_counter()
    for i in range(runs):
        stats = replace(base, num_images=10 + (i * 37) % 500, text_diversity=0.3 + (i % 50) / 100)
        cfg = TrainConfig(rank=[8, 16, 32][i % 3], learning_rate=[5e-5, 1e-4, 2e-4][i % 3], max_steps=500 + i % 1000)
        rec = recommend(TuneRequest(stats, family_row("sd15"), base=cfg,
                                    pinned=frozenset({"rank", "learning_rate", "max_steps"})))
        params, metrics = tracking_record(rec)
        parent = tracker.start_parent(f"run-{i:04d}", tags={"lora_factory.run_id": f"run-{i:04d}"})
        tune = tracker.start_stage(parent, "tune", tags={"lora_factory.run_id": f"run-{i:04d}"})
        tracker.log_params(tune, params)
        tracker.log_metrics(tune, metrics)
        tracker.end(tune)
        ev = tracker.start_stage(parent, "evaluate")
        tracker.log_metrics(ev, {SCORE_METRIC: ((i * 7919) % 100 - 40) / 1000})
        tracker.end(ev)
        tracker.end(parent)
    planting = time.perf_counter() - started
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        history = load_history(uri, "lora-factory", "sd15")
        rec = recommend(TuneRequest(base, family_row("sd15"), gpu_gb=12, history=history))
        times.append(time.perf_counter() - t0)
    return {"past_runs": len(history), "seconds_to_recommend": round(min(times), 3), "target_s": 2.0,
            "neighbours_cited": len(rec.shift.evidence) if rec.shift else 0, "planting_s": round(planting, 1)}


def main() -> None:
    figures: dict[str, Any] = {"memory": memory_figures()}
    figures["memory_max_abs_error"] = max(abs(f["error"]) for f in figures["memory"])
    figures["memory_target"] = TARGET_ERROR
    figures["vae"] = vae_figures()
    figures["published"] = published_figures()
    figures["retrace"] = retrace_figures()
    if "--skip-history" not in sys.argv:
        figures["history"] = history_figures()
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        child(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5] == "1")
    elif sys.argv[1:2] == ["--vae-child"]:
        vae_child(int(sys.argv[2]), int(sys.argv[3]))
    else:
        main()
