"""A content-addressed disk cache for the frozen encoders' outputs (VAE latents, text embeddings).

Why: with the VAE and the text encoder frozen, an image's latent distribution and a caption's
embedding are the same every epoch and every run; encoding them again is most of a small LoRA's
step on a CPU (and decoding a large JPEG costs more than the UNet step at 512 px). kohya and the
diffusers examples cache within one run; this cache is keyed by content, so a nightly retrain on
a mostly unchanged dataset re-encodes only the new images.

Keys: the encoder's fingerprint (its class, config and a sample of every weight; a different
model or a fine-tuned one gets a different namespace) / the input's content key (the image's
sha256 with its bucket and flip, or the caption's sha256). Values are safetensors files written
to a temporary name and renamed, so a killed run never leaves half a file behind. A file that
does not load (disk trouble, a foreign file) is treated as a miss and rewritten.

Within a run, entries also stay in memory (up to a budget): a small dataset's latents are read
from disk once, not once per epoch, so a warm-cache step costs the model's work and little else.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

# Elements hashed per weight tensor: enough to tell fine-tunes apart, cheap for SDXL's 3.5 GB.
_FINGERPRINT_ELEMENTS = 4096
# Bytes of entries a cache keeps in memory (SDXL latents at 1024 px: ~0.5 MB an image and flip).
MEMORY_BUDGET = 512 * 2**20


def module_fingerprint(module: torch.nn.Module, *extra: str) -> str:
    """A short stable id for a frozen model: class, config, and the first elements of every
    parameter. Two loads of the same weights give the same id on any machine."""
    h = hashlib.sha256(type(module).__name__.encode())
    config = getattr(module, "config", None)
    if config is not None:
        as_dict = config.to_dict() if hasattr(config, "to_dict") else dict(config)
        as_dict = {k: v for k, v in as_dict.items() if not k.startswith("_")}
        h.update(json.dumps(as_dict, sort_keys=True, default=str).encode())
    for name, param in module.state_dict().items():
        head = param.detach().reshape(-1)[:_FINGERPRINT_ELEMENTS].to("cpu", torch.float32)
        h.update(f"{name}:{tuple(param.shape)}:{param.dtype}".encode())
        h.update(head.numpy().tobytes())
    for item in extra:
        h.update(item.encode())
    return h.hexdigest()[:20]


class FeatureCache:
    """Tensors by key under ``root/namespace``; ``root=None`` disables it (every lookup misses,
    nothing is written). Counts hits and misses for the run's report; a hit from memory is a hit."""

    def __init__(self, root: Path | None, namespace: str, memory_budget: int = MEMORY_BUDGET) -> None:
        self.folder = Path(root) / namespace if root is not None else None
        self.hits = 0
        self.misses = 0
        self._memory: dict[str, dict[str, torch.Tensor]] = {}
        self._memory_left = memory_budget

    def _path(self, key: str) -> Path:
        assert self.folder is not None
        return self.folder / key[:2] / f"{key}.safetensors"

    def get(self, key: str) -> dict[str, torch.Tensor] | None:
        if self.folder is None:
            return None
        tensors = self._memory.get(key)
        if tensors is None:
            try:
                tensors = load_file(str(self._path(key)))
            except (FileNotFoundError, SafetensorError, OSError):
                self.misses += 1
                return None
            self._remember(key, tensors)
        self.hits += 1
        return tensors

    def put(self, key: str, tensors: dict[str, torch.Tensor]) -> None:
        if self.folder is None:
            return
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        stored = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
        save_file(stored, str(tmp))
        tmp.replace(path)
        self._remember(key, stored)

    def _remember(self, key: str, tensors: dict[str, torch.Tensor]) -> None:
        size = sum(t.numel() * t.element_size() for t in tensors.values())
        if size <= self._memory_left:
            self._memory[key] = tensors
            self._memory_left -= size

    def stats(self) -> dict[str, int]:
        return {"hits": self.hits, "misses": self.misses}


def text_key(caption: str) -> str:
    return hashlib.sha256(caption.encode("utf-8")).hexdigest()
