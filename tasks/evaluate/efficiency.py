"""Efficiency: seconds per image (p50/p95/p99) and peak memory for generation without the LoRA,
with it loaded (PEFT layers in the forward pass) and with it fused into the base weights.

Why three modes: a loaded LoRA costs extra matmuls per step, fusing removes them; users choosing
how to ship (adapter vs fused variant) need both numbers next to the base's. Every image is
rendered alone (batch 1) from the same small fixed prompt set and seed, after one warm-up
image per mode that is not counted (first calls allocate and compile).

Memory: on CUDA the allocator's peak (``torch.cuda.max_memory_allocated``, reset per mode); on
CPU the process's resident-set peak above its resident set at the start of the mode (Linux
``VmHWM``, reset through ``/proc/self/clear_refs``; elsewhere ``ru_maxrss``, which cannot be
reset, so the delta can read 0). ``memory_kind`` in eval.json says which one was measured.
"""

from __future__ import annotations

import logging
import re
import resource
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .generate import render
from .prompts import EvalPrompt

log = logging.getLogger(__name__)
MODES = ("base", "lora", "fused")
PERCENTILES = (50, 95, 99)
_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def latency_percentiles(seconds: Sequence[float]) -> dict[str, float | None]:
    """``p50``/``p95``/``p99`` of the per-image seconds (linear interpolation between the
    nearest ranks, numpy's default), ``None`` for no measurements."""
    values = np.asarray([s for s in seconds if np.isfinite(s)], dtype=np.float64)
    if not len(values):
        return {f"p{q}": None for q in PERCENTILES}
    return {f"p{q}": float(np.percentile(values, q)) for q in PERCENTILES}


def _status_kib(field: str) -> int | None:
    try:
        found = re.search(rf"^{field}:\s+(\d+) kB", _STATUS.read_text(), re.MULTILINE)
    except OSError:
        return None
    return int(found.group(1)) if found else None


class MemoryProbe:
    """Peak memory of one block of work, in MiB: CUDA allocator peak or process RSS peak delta."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.kind = "cuda_peak_allocated" if self.cuda else "rss_peak_delta"
        self._start = 0.0

    def start(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._start = 0.0
            return
        try:  # Linux: "5" resets the peak resident set (VmHWM) to the current one
            _CLEAR_REFS.write_text("5")
        except OSError:  # no reset: the peak may predate this block, so say so in the figure's kind
            self.kind = "rss_peak_delta_unreset"
        rss = _status_kib("VmRSS")
        self._start = float(rss) if rss is not None else self._rss_peak_kib()

    def _rss_peak_kib(self) -> float:
        hwm = _status_kib("VmHWM")
        if hwm is not None:
            return float(hwm)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return float(peak) / 1024 if sys.platform == "darwin" else float(peak)  # macOS: bytes

    def peak_mib(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated() / 2**20
        return max(0.0, self._rss_peak_kib() - self._start) / 1024


def time_mode(pipe: Any, prompts: list[EvalPrompt], seed: int, images: int, kw: dict[str, Any],
              clock: Callable[[], float] = time.perf_counter) -> tuple[list[float], float, str]:
    """(seconds per image, peak MiB, memory kind) for ``images`` batch-1 renders of ``prompts``
    in turn (one uncounted warm-up first)."""
    probe = MemoryProbe(kw["device"])
    one = {**kw, "batch_size": 1}
    render(pipe, prompts[:1], [seed], "warmup", **one)
    probe.start()
    seconds = []
    for i in range(images):
        t0 = clock()
        render(pipe, [prompts[i % len(prompts)]], [seed], "timing", **one)
        if probe.cuda:
            torch.cuda.synchronize()
        seconds.append(clock() - t0)
    return seconds, probe.peak_mib(), probe.kind


def mode_record(seconds: list[float], peak_mib: float) -> dict[str, Any]:
    return {"images": len(seconds), "seconds": seconds, **latency_percentiles(seconds),
            "peak_memory_mib": peak_mib}


def measure_base(pipe: Any, prompts: list[EvalPrompt], seed: int, images: int, kw: dict[str, Any]
                 ) -> dict[str, Any]:
    """The ``base`` mode: call before the LoRA is loaded."""
    seconds, peak, _ = time_mode(pipe, prompts, seed, images, kw)
    return mode_record(seconds, peak)


def measure_loaded(pipe: Any, prompts: list[EvalPrompt], seed: int, images: int, kw: dict[str, Any],
                   base: dict[str, Any]) -> dict[str, Any]:
    """With the LoRA loaded in ``pipe``: the ``lora`` mode, then ``fused`` (fused for the
    measurement and unfused after, so the pipeline is left as it was). ``base``: the record
    of :func:`time_mode` taken before the LoRA was loaded."""
    modes = {"base": base}
    seconds, peak, kind = time_mode(pipe, prompts, seed, images, kw)
    modes["lora"] = mode_record(seconds, peak)
    try:
        pipe.fuse_lora(lora_scale=1.0)
    except Exception as e:  # noqa: BLE001 - any failure to fuse is the same fact: no fused figures
        modes["fused"] = unavailable(e)
        log.warning("evaluate: fused latency not measured: %s", modes["fused"]["unavailable"])
        _unfuse(pipe)  # a fuse that failed half-way must not leave some layers fused
    else:
        try:
            seconds, peak, kind = time_mode(pipe, prompts, seed, images, kw)
        finally:
            pipe.unfuse_lora()
        modes["fused"] = mode_record(seconds, peak)
    return {"device": str(kw["device"]), "memory_kind": kind, "prompts": [p.text for p in prompts],
            "seed": seed, "modes": modes}


def unavailable(error: BaseException) -> dict[str, Any]:
    """A mode that could not be measured, with the reason on one line."""
    first = (str(error).strip().splitlines() or [""])[0]
    return {"unavailable": f"fuse_lora failed: {type(error).__name__}" + (f": {first}" if first else "")}


def _unfuse(pipe: Any) -> None:
    try:
        pipe.unfuse_lora()
    except Exception as e:  # noqa: BLE001 - nothing was fused, or the pipeline cannot unfuse: said in the log
        log.warning("evaluate: unfuse_lora after the failed fuse: %s: %s", type(e).__name__, e)


def efficiency_metrics(eff: dict[str, Any]) -> dict[str, float]:
    """Flat MLflow metrics: ``latency_p50_s_base``, ..., ``peak_memory_mib_fused``."""
    flat: dict[str, float] = {}
    for mode, rec in eff.get("modes", {}).items():
        if "unavailable" in rec:
            continue
        flat |= {f"latency_p{q}_s_{mode}": rec[f"p{q}"] for q in PERCENTILES if rec.get(f"p{q}") is not None}
        flat[f"peak_memory_mib_{mode}"] = rec["peak_memory_mib"]
    return flat
