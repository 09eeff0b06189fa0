"""Portability: does a LoRA file fit the base pipeline, and do its diffusers and kohya files
give the same images?

``load_lora_weights`` skips what it cannot place and only logs about it, so an adapter can load
"fine" and do less than it was trained to. Here every module a file names must exist in the
base pipeline with matching shapes, and have both its down and up matrices; then both files are
loaded in turn and must render the same image for the same prompt and seed.

A diffusers file can also lose modules to its key naming: ``load_lora_weights`` decides a
component's naming (PEFT ``lora_A``/``lora_B`` or diffusers' ``lora.down``/``lora.up``) from its
first key and drops the keys named the other way, so a file mixing both (what lora-factory wrote
before ``training.lora.diffusers_keys``, when a conv or ``proj_in`` LoRA sorted first) loads with
its attention LoRAs silently missing. ``ignored`` names those modules; after loading, the count
of adapted layers must reach the file's modules.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open

from training.export_kohya import kohya_prefixes
from training.families import family_for
from training.lora import DENOISERS, TEXT_ENCODERS

from .findings import LORA_SUFFIXES, lora_modules

PIXEL_TOL = 2 / 255  # max |difference| between the two files' images


@dataclass
class KeyReport:
    """What a LoRA file names that the base pipeline does not have, or lacks."""

    modules: int = 0
    missing: list[str] = field(default_factory=list)  # a module's lora_down/up (A/B) not in the file
    unexpected: list[str] = field(default_factory=list)  # modules the base pipeline has no layer for
    shapes: list[str] = field(default_factory=list)  # modules whose matrices do not fit the layer
    ignored: list[str] = field(default_factory=list)  # modules load_lora_weights drops for their key naming
    applied: int | None = None  # adapted layers counted after loading the file (None: not loaded)

    @property
    def fits(self) -> bool:
        """Every module has a layer of its shape in the base pipeline: it is a LoRA for that base."""
        return self.modules > 0 and not (self.missing or self.unexpected or self.shapes)

    @property
    def ok(self) -> bool:
        return self.fits and not self.ignored and (self.applied is None or self.applied >= self.modules)

    def line(self) -> str:
        if self.modules == 0:
            return "no LoRA weights (lora_down/lora_up or lora_A/lora_B tensors) in the file"
        parts = [f"{len(v)} {k} (first: {v[0]})" for k, v in
                 (("missing keys", self.missing), ("unexpected modules", self.unexpected),
                  ("shape mismatches", self.shapes),
                  ("modules diffusers' loader ignores (mixed lora_A / lora.down key naming)", self.ignored)) if v]
        if self.applied is not None and self.applied < self.modules:
            parts.append(f"{self.applied} of {self.modules} modules adapted after load_lora_weights")
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


def _as_loaded(component: str, keys: list[str]) -> list[str]:
    """A diffusers file component's keys (in file order) renamed as ``load_lora_weights`` renames
    them, with diffusers' own converters: the denoiser's only when its first key is not PEFT-named,
    a text encoder's through the diffusers then PEFT mappings (none: diffusers cannot tell)."""
    from diffusers.utils import (
        convert_state_dict_to_diffusers,
        convert_state_dict_to_peft,
        convert_unet_state_dict_to_peft,
    )

    state = dict.fromkeys(keys)  # the converters rename keys one by one, in order
    try:
        if component in DENOISERS:
            return list(state if "lora_A" in keys[0] else convert_unet_state_dict_to_peft(state))
        return list(convert_state_dict_to_peft(convert_state_dict_to_diffusers(state)))
    except ValueError:  # "Could not automatically infer state dict type": the load fails
        return []


def ignored_modules(keys: list[str]) -> list[str]:
    """Modules of a diffusers-format file (``unet.…`` keys, in file order) whose weights
    ``load_lora_weights`` leaves unloaded because of their key naming."""
    by_component: dict[str, list[str]] = {}
    for key in keys:
        component = key.split(".", 1)[0]
        if component in (*DENOISERS, *TEXT_ENCODERS) and not key.endswith(".alpha"):
            by_component.setdefault(component, []).append(key.removeprefix(component + "."))
    ignored: dict[str, None] = {}
    for component, own in by_component.items():
        loaded = _as_loaded(component, own)
        for i, key in enumerate(own):
            if i >= len(loaded) or not loaded[i].endswith((".lora_A.weight", ".lora_B.weight")):
                suffix = next((s for s in LORA_SUFFIXES if key.endswith(s)), "")
                ignored[f"{component}.{key.removesuffix(suffix)}"] = None
    return list(ignored)


def applied_modules(pipe: Any) -> int:
    """Layers of the pipeline's denoiser and text encoders that carry a LoRA adapter."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    return sum(isinstance(layer, BaseTunerLayer) for name in (*DENOISERS, *TEXT_ENCODERS)
               if getattr(pipe, name, None) is not None for layer in getattr(pipe, name).modules())


def check_keys(pipe: Any, family: str, path: Path) -> KeyReport:
    """Every module of ``path`` against the base pipeline's layers, and the ones diffusers'
    loader would drop for their naming."""
    modules, _ = lora_modules(path)
    layers = _layers(pipe, family)
    with safe_open(str(path), framework="pt") as f:
        names = list(f.keys())  # noqa: SIM118 - the file's order, as diffusers reads it
    report = KeyReport(modules=len(modules), ignored=ignored_modules(names))
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
