"""Silent failures, each a named finding: the ways a LoRA run "succeeds" and is still useless.

``nan_images`` / ``black_images`` / ``blank_images`` (the pipeline produced nothing to look at,
unless the training images are black or flat in that colour too: then it is what was learned),
``zero_lora`` (the adapter's weight delta is ~0: it cannot change anything), ``identical_to_base``
(it changed nothing), ``flat_loss`` (training never learned), ``random_scorer`` (the numbers come
from a random tiny model and carry no meaning).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors import safe_open

from lora_factory.schemas import Finding

from .generate import Sample

BLACK_MEAN = 0.02  # mean pixel value (0..1) below which an image is black
BLANK_STD = 0.01  # every channel's standard deviation below this: one flat colour (of any hue)
FLAT_COLOUR_TOL = 0.1  # max per-channel difference of mean colour: a flat image "like" a flat training image
IDENTICAL_TOL = 0.5 / 255  # max |LoRA - base| that still counts as the same image
FLAT_LOSS_REL = 0.01  # relative change of the mean loss, first quarter vs last: "never moved"
FLAT_LOSS_MIN_STEPS = 8


def _image_kind(pixels: np.ndarray) -> str | None:
    """``nan_images``, ``black_images``, ``blank_images`` or None (an image worth looking at)."""
    if not np.isfinite(pixels).all():
        return "nan_images"
    if float(pixels.mean()) < BLACK_MEAN:
        return "black_images"
    if float(pixels.reshape(-1, pixels.shape[-1]).std(axis=0).max()) < BLANK_STD:
        return "blank_images"
    return None


def _like_a_reference(pixels: np.ndarray, kind: str, references: list[np.ndarray]) -> bool:
    """A black image when a training image is black too, a flat image when a training image is
    flat in (about) the same colour: what the LoRA was trained to make, not a failure."""
    colour = _mean_colour(pixels)
    return any(_image_kind(ref) == kind
               and (kind == "black_images" or np.abs(_mean_colour(ref) - colour).max() <= FLAT_COLOUR_TOL)
               for ref in references)


def _mean_colour(pixels: np.ndarray) -> np.ndarray:
    return pixels.reshape(-1, pixels.shape[-1]).mean(axis=0)


def reference_pixels(paths: list[Path]) -> list[np.ndarray]:
    """Training images as HxWx3 floats in [0, 1], the form ``image_findings`` compares."""
    out = []
    for path in paths:
        with Image.open(path) as im:
            out.append(np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0)
    return out


def image_findings(samples: list[Sample], side: str, references: list[np.ndarray] | None = None) -> list[Finding]:
    """NaN, black and blank images among ``samples`` (one finding per kind, naming the images).

    With the training images as ``references`` (the LoRA's side), a black or flat image like one
    of them is what the LoRA learned: a LoRA trained on flat red images should make flat red
    images. Those are one ``info`` finding, ``like_training_images``, not an error."""
    kinds: dict[str, list[str]] = {"nan_images": [], "black_images": [], "blank_images": []}
    expected: list[str] = []
    for s in samples:
        kind = _image_kind(s.pixels)
        if kind is None:
            continue
        if kind != "nan_images" and references and _like_a_reference(s.pixels, kind, references):
            expected.append(s.name)
        else:
            kinds[kind].append(s.name)
    what = {"nan_images": "have NaN pixels", "black_images": "are black", "blank_images": "are one flat colour"}
    found = [Finding(code=code, severity="error", items=names,
                     message=f"{len(names)} of {len(samples)} {side} images {what[code]}")
             for code, names in kinds.items() if names]
    if expected:
        found.append(Finding(code="like_training_images", severity="info", items=expected,
                             message=f"{len(expected)} of {len(samples)} {side} images are black or one flat colour "
                                     "like training images that are: learned, not a failure"))
    return found


LORA_SUFFIXES = {".lora_A.weight": "down", ".lora_B.weight": "up", ".lora.down.weight": "down",
                 ".lora.up.weight": "up", ".lora_down.weight": "down", ".lora_up.weight": "up", ".alpha": "alpha"}


def lora_modules(path: Path) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, str]]:
    """Module -> {"down", "up", "alpha"} from a PEFT (lora_A/B), diffusers (lora.down/up) or kohya
    (lora_down/up) file, and the file's metadata."""
    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata() or {})
        return group_modules({key: f.get_tensor(key) for key in f.keys()}), meta  # noqa: SIM118


def group_modules(tensors: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """LoRA tensors by module: ``{"down", "up", "alpha"}`` (other tensors ignored)."""
    modules: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        suffix = next((s for s in LORA_SUFFIXES if key.endswith(s)), None)
        if suffix is not None:
            modules.setdefault(key[: -len(suffix)], {})[LORA_SUFFIXES[suffix]] = value.float()
    return modules


def _peft_scales(meta: dict[str, str]) -> dict[str, float]:
    """Component -> lora_alpha / r from a diffusers file's ``lora_adapter_metadata``."""
    try:
        cfg = json.loads(meta.get("lora_adapter_metadata", "{}"))
    except json.JSONDecodeError:
        return {}
    comps = {k.split(".")[0] for k in cfg if k.endswith(".r")}
    return {c: float(cfg[f"{c}.lora_alpha"]) / float(cfg[f"{c}.r"]) for c in comps
            if cfg.get(f"{c}.lora_alpha") and cfg.get(f"{c}.r")}


def weight_delta_rms(path: Path) -> float:
    """RMS of every module's weight delta ``scale * up @ down`` over all delta entries; a LoRA
    whose ``up`` matrices never left zero has 0. (Scale: alpha / rank — per module in kohya
    files, per component in the diffusers file's adapter metadata, else 1.)"""
    modules, meta = lora_modules(path)
    scales = _peft_scales(meta)
    total, count = 0.0, 0
    for name, parts in modules.items():
        if "down" not in parts or "up" not in parts:
            continue
        down, up = parts["down"].flatten(1), parts["up"].flatten(1)
        scale = (float(parts["alpha"]) / down.shape[0] if "alpha" in parts
                 else scales.get(name.split(".")[0], 1.0))
        delta = scale * (up @ down)
        total += float((delta ** 2).sum())
        count += delta.numel()
    return math.sqrt(total / count) if count else 0.0


def zero_lora_finding(rms: float, limit: float) -> list[Finding]:
    if rms > limit:
        return []
    return [Finding(code="zero_lora", severity="error",
                    message=f"the LoRA's weight-delta RMS is {rms:.3g} (<= {limit:.3g}): it cannot change the images; "
                            "raise the learning rate or the steps")]


def identical_finding(base: list[Sample], lora: list[Sample]) -> list[Finding]:
    """Every LoRA image equal (to half a grey level) to its base image of the same prompt and seed."""
    same = [lo.name for b, lo in zip(base, lora, strict=True)
            if np.nanmax(np.abs(np.nan_to_num(b.pixels) - np.nan_to_num(lo.pixels))) <= IDENTICAL_TOL]
    if not base or len(same) < len(base):
        return []
    return [Finding(code="identical_to_base", severity="error", items=same,
                    message="every LoRA image is identical to its base image: the LoRA did not load or does nothing")]


def flat_loss_finding(losses: list[float]) -> list[Finding]:
    """The mean loss of the last quarter of training within 1% of the first quarter's."""
    finite = [v for v in losses if math.isfinite(v)]
    if len(finite) < FLAT_LOSS_MIN_STEPS:
        return []
    q = len(finite) // 4
    first, last = float(np.mean(finite[:q])), float(np.mean(finite[-q:]))
    if abs(last - first) > FLAT_LOSS_REL * max(abs(first), 1e-12):
        return []
    return [Finding(code="flat_loss", severity="warning",
                    message=f"the training loss never moved ({first:.4g} -> {last:.4g} over {len(finite)} steps)")]


def random_scorer_finding(random_refs: dict[str, str]) -> list[Finding]:
    if not random_refs:
        return []
    return [Finding(code="random_scorer", severity="warning", items=sorted(random_refs.values()),
                    message=f"the {', '.join(sorted(random_refs))} scorer is a random tiny model: "
                            "its scores carry no meaning")]
