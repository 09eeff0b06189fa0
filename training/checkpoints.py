"""Checkpoints: everything a killed run needs to continue exactly where it was.

A checkpoint is a folder ``<dir>/step-000120/`` with

- ``lora.safetensors``: the trainable (LoRA) parameters by their module names, fp32;
- ``state.pt``: optimizer, LR scheduler, every random state (torch global, the loop's generator,
  python, numpy), step, epoch and position in the epoch's data order, the EMA of the loss, the
  guards' counters, the callbacks' memory, and the dataset and config hashes.

It is written under a temporary name and renamed into place, so a crash while saving leaves the
previous checkpoint as the latest complete one. ``<dir>/best/`` is a copy of the checkpoint with
the best metric (validation loss, else the smoothed training loss); the last ``keep`` step folders
are kept.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from lora_factory.config import TrainConfig
from lora_factory.errors import StageError

WEIGHTS = "lora.safetensors"
STATE = "state.pt"
BEST = "best"
_STEP_DIR = re.compile(r"^step-(\d+)$")

# Settings that change what is logged or kept, not the weights a step produces: a resume may
# change them freely.
BOOKKEEPING_KEYS = frozenset({
    "log_every", "checkpoint_every", "keep_checkpoints", "resume", "force_resume", "validation_every",
    "early_stopping_window", "sample_every", "sample_prompts", "sample_seed", "sample_steps",
    "export_kohya", "cache_latents", "cache_text_embeddings",
})


def config_hash(cfg: TrainConfig, **extra: Any) -> str:
    """sha256 of the settings that shape the training trajectory (plus base model, family, seed)."""
    data = {k: v for k, v in cfg.model_dump().items() if k not in BOOKKEEPING_KEYS}
    blob = json.dumps({**data, **extra}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def dataset_hash(items: list[tuple[Path, str, str]]) -> str:
    """sha256 over (file name, caption, sha256 of the image bytes as hex) of every example, in
    order."""
    h = hashlib.sha256()
    for path, caption, content_sha256 in items:
        h.update(Path(path).name.encode() + b"\0" + caption.encode() + b"\0")
        h.update(bytes.fromhex(content_sha256))
    return h.hexdigest()


def rng_states(generator: torch.Generator) -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "generator": generator.get_state(),
            "python": random.getstate(), "numpy": np.random.get_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def restore_rng_states(states: dict[str, Any], generator: torch.Generator) -> None:
    torch.set_rng_state(states["torch"])
    generator.set_state(states["generator"])
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    if states.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def step_dir(root: Path, step: int) -> Path:
    return Path(root) / f"step-{step:06d}"


def list_checkpoints(root: Path) -> list[Path]:
    """Complete step checkpoints, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir()
             if (m := _STEP_DIR.match(p.name)) and (p / STATE).is_file()]
    return [p for _, p in sorted(found)]


def list_weights(root: Path) -> list[Path]:
    """Step folders that hold weights (a complete checkpoint, or one published without its
    training state by :func:`publish_weights`), oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name)) and (p / WEIGHTS).is_file()]
    return [p for _, p in sorted(found)]


def publish_weights(root: Path, dest: Path, k: int) -> list[Path]:
    """Copy the weights of the last ``k`` complete checkpoints under ``root`` to
    ``dest/step-NNNNNN/``: what later stages choose among once the run's scratch is gone
    (the optimizer and RNG state stay behind: only a resume needs them)."""
    published = []
    for src in list_checkpoints(root)[-k:] if k > 0 else []:
        target = Path(dest) / src.name
        target.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src / WEIGHTS, target / WEIGHTS)
        published.append(target)
    return published


def latest_checkpoint(root: Path) -> Path | None:
    found = list_checkpoints(root)
    return found[-1] if found else None


def save_checkpoint(target: Path, weights: dict[str, torch.Tensor], state: dict[str, Any]) -> Path:
    """Write ``target`` atomically (temp folder, then rename)."""
    target = Path(target)
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: v.detach().to("cpu", torch.float32).contiguous() for k, v in weights.items()},
              str(tmp / WEIGHTS))
    torch.save(state, tmp / STATE)
    if target.exists():
        old = target.with_name(target.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        target.rename(old)
        tmp.rename(target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(target)
    return target


def load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    # Our own file: it holds python/numpy RNG states, which the weights-only unpickler refuses.
    return load_file(str(Path(path) / WEIGHTS)), torch.load(Path(path) / STATE, weights_only=False)


def prune(root: Path, keep: int) -> None:
    """Delete all but the last ``keep`` step checkpoints (``best/`` is separate and kept)."""
    for old in list_checkpoints(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def check_compatible(path: Path, state: dict[str, Any], data_hash: str, cfg_hash: str,
                     force: bool) -> None:
    """Refuse, in one line, to continue a checkpoint made from other data or other settings."""
    changed = [name for name, saved, now in (("dataset", state.get("dataset_hash"), data_hash),
                                             ("training config", state.get("config_hash"), cfg_hash))
               if saved != now]
    if changed and not force:
        raise StageError(
            f"cannot resume from {path}: the {' and the '.join(changed)} changed since it was written; "
            "set train.force_resume=true to continue anyway, or train.resume=false to start over"
        )
