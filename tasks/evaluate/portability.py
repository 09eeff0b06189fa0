"""Portability: does a LoRA file fit the base pipeline, and do its diffusers and kohya files
give the same images?

``load_lora_weights`` skips what it cannot place and only logs about it, so an adapter can load
"fine" and do less than it was trained to. Here every module a file names must exist in the
base pipeline with matching shapes, and have both its down and up matrices; then both files are
loaded in turn and must render the same image for the same prompt and seed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from training.export_kohya import kohya_prefixes
from training.families import family_for

from .findings import lora_modules

PIXEL_TOL = 2 / 255  # max |difference| between the two files' images


@dataclass
class KeyReport:
    """What a LoRA file names that the base pipeline does not have, or lacks."""

    modules: int = 0
    missing: list[str] = field(default_factory=list)  # a module's lora_down/up (A/B) not in the file
    unexpected: list[str] = field(default_factory=list)  # modules the base pipeline has no layer for
    shapes: list[str] = field(default_factory=list)  # modules whose matrices do not fit the layer

    @property
    def ok(self) -> bool:
        return self.modules > 0 and not (self.missing or self.unexpected or self.shapes)

    def line(self) -> str:
        if self.modules == 0:
            return "no LoRA weights (lora_down/lora_up or lora_A/lora_B tensors) in the file"
        parts = [f"{len(v)} {k} (first: {v[0]})" for k, v in
                 (("missing keys", self.missing), ("unexpected modules", self.unexpected),
                  ("shape mismatches", self.shapes)) if v]
        return "; ".join(parts) or "ok"


def _layers(pipe: Any, family: str) -> dict[str, torch.nn.Module]:
    """Every adaptable layer by diffusers name (``unet.<path>``) and by the family's kohya name."""
    fam = family_for(family)
    layers: dict[str, torch.nn.Module] = {}
    for component in dict.fromkeys([fam.denoiser, *(c.rstrip(".") for c, _ in kohya_prefixes(family))]):
        module = getattr(pipe, component, None)
        for name, layer in module.named_modules() if module is not None else ():
            if isinstance(layer, torch.nn.Linear | torch.nn.Conv2d):
                layers[f"{component}.{name}"] = layer
    return layers | fam.kohya_layers(pipe)


def _pointwise(kernel: tuple[int, ...]) -> bool:
    """No spatial extent: a linear layer's () or a 1x1 kernel."""
    return set(kernel) <= {1}


def _fits(layer: torch.nn.Module, down: torch.Tensor, up: torch.Tensor) -> bool:
    """``down`` [r, in] / ``up`` [out, r] of a linear layer; of a conv layer [out, in, k, k] the
    LoCon layout: ``down`` [r, in, k, k] (the layer's kernel) and ``up`` [out, r, 1, 1]. A 1x1
    kernel and a linear layer take either layout (diffusers and kohya write both)."""
    w = layer.weight  # base layers are plain (no adapter loaded) when checked
    if getattr(layer, "base_layer", None) is not None:
        w = layer.base_layer.weight
    kernel, down_kernel = tuple(w.shape[2:]), tuple(down.shape[2:])
    if down_kernel != kernel and not (_pointwise(down_kernel) and _pointwise(kernel)):
        return False
    if not _pointwise(tuple(up.shape[2:])):
        return False
    return down.shape[1] == w.shape[1] and up.shape[0] == w.shape[0] and up.shape[1] == down.shape[0]


def check_keys(pipe: Any, family: str, path: Path) -> KeyReport:
    """Every module of ``path`` against the base pipeline's layers."""
    modules, _ = lora_modules(path)
    layers = _layers(pipe, family)
    report = KeyReport(modules=len(modules))
    for name, parts in sorted(modules.items()):
        for kind in ("down", "up"):
            if kind not in parts:
                report.missing.append(f"{name} lora_{kind}")
        layer = layers.get(name)
        if layer is None:
            report.unexpected.append(name)
        elif "down" in parts and "up" in parts and not _fits(layer, parts["down"], parts["up"]):
            report.shapes.append(f"{name} down {tuple(parts['down'].shape)} up {tuple(parts['up'].shape)}")
    return report


def max_difference(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(np.nan_to_num(a) - np.nan_to_num(b)).max())


def portability_record(keys: dict[str, KeyReport], pixel_diff: float | None) -> dict[str, Any]:
    """``EvalResult.portability``: per file its key report, the image difference, and passed."""
    passed = all(k.ok for k in keys.values()) and (pixel_diff is None or pixel_diff <= PIXEL_TOL)
    return {"passed": passed, "files": {n: {**asdict(k), "ok": k.ok, "problem": k.line()} for n, k in keys.items()},
            "max_pixel_difference": pixel_diff, "tolerance": PIXEL_TOL}
