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
    nothing is written). Counts hits and misses for the run's report."""

    def __init__(self, root: Path | None, namespace: str) -> None:
        self.folder = Path(root) / namespace if root is not None else None
        self.hits = 0
        self.misses = 0

    def _path(self, key: str) -> Path:
        assert self.folder is not None
        return self.folder / key[:2] / f"{key}.safetensors"

    def get(self, key: str) -> dict[str, torch.Tensor] | None:
        if self.folder is None:
            return None
        path = self._path(key)
        try:
            tensors = load_file(str(path))
        except (FileNotFoundError, SafetensorError, OSError):
            self.misses += 1
            return None
        self.hits += 1
        return tensors

    def put(self, key: str, tensors: dict[str, torch.Tensor]) -> None:
        if self.folder is None:
            return
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        save_file({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, str(tmp))
        tmp.replace(path)

    def stats(self) -> dict[str, int]:
        return {"hits": self.hits, "misses": self.misses}


def text_key(caption: str) -> str:
    return hashlib.sha256(caption.encode("utf-8")).hexdigest()
