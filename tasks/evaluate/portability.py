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
    """Every adaptable layer by diffusers name (``unet.<path>``) and by kohya name."""
    layers: dict[str, torch.nn.Module] = {}
    named: list[tuple[str, str | None]] = list(kohya_prefixes(family))
    if not any(component == "transformer." for component, _ in named):
        named.append(("transformer.", None))  # a transformer's diffusers names (Flux)
    for component, prefix in named:
        module = getattr(pipe, component.rstrip("."), None)
        if module is None:
            continue
        for name, layer in module.named_modules():
            if isinstance(layer, torch.nn.Linear | torch.nn.Conv2d):
                layers[component + name] = layer
                if prefix is not None:
                    layers[prefix + name.replace(".", "_")] = layer
    if family == "flux":
        layers |= _flux_kohya_layers(pipe.transformer)
    return layers


def _flux_kohya_layers(transformer: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """Flux's kohya names (sd-scripts', ``families.flux``) as shape stand-ins on the meta device:
    a fused layer (``img_attn_qkv``, single ``linear1``) takes its members' input and the sum
    of their outputs, as the exporter writes it."""
    from training.families.flux import kohya_module

    shapes: dict[str, tuple[int, int]] = {}
    for name, layer in transformer.named_modules():
        if not isinstance(layer, torch.nn.Linear):
            continue
        try:
            kohya, _ = kohya_module(name)
        except ValueError:
            continue
        shapes[kohya] = (layer.in_features, shapes.get(kohya, (0, 0))[1] + layer.out_features)
    return {k: torch.nn.Linear(i, o, bias=False, device="meta") for k, (i, o) in shapes.items()}


def _fits(layer: torch.nn.Module, down: torch.Tensor, up: torch.Tensor) -> bool:
    w = layer.weight  # base layers are plain (no adapter loaded) when checked
    if getattr(layer, "base_layer", None) is not None:
        w = layer.base_layer.weight
    # Flattened, a conv LoRA's down (r, in, kh, kw) is (r, in * kh * kw), like the conv's own weight.
    fan_in = int(np.prod(w.shape[1:]))
    return down.shape[1] == fan_in and up.shape[0] == w.shape[0] and up.shape[1] == down.shape[0]


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
        elif "down" in parts and "up" in parts and not _fits(layer, parts["down"].flatten(1), parts["up"].flatten(1)):
            report.shapes.append(f"{name} down {tuple(parts['down'].shape)} up {tuple(parts['up'].shape)}")
    return report


def max_difference(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(np.nan_to_num(a) - np.nan_to_num(b)).max())


def portability_record(keys: dict[str, KeyReport], pixel_diff: float | None) -> dict[str, Any]:
    """``EvalResult.portability``: per file its key report, the image difference, and passed."""
    passed = all(k.ok for k in keys.values()) and (pixel_diff is None or pixel_diff <= PIXEL_TOL)
    return {"passed": passed, "files": {n: {**asdict(k), "ok": k.ok, "problem": k.line()} for n, k in keys.items()},
            "max_pixel_difference": pixel_diff, "tolerance": PIXEL_TOL}
