"""DINOv2 image embeddings: the DreamBooth paper's subject-fidelity measure (DINO similarity).

Why DINO next to CLIP: DINO is trained without text, so its image vectors separate instances of
one class (this dog vs another dog) that CLIP's text-aligned space puts together. The embedding
is the CLS token after the final layer norm (``pooler_output``), L2-normalised, as in DreamBooth.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from PIL import Image


class DinoScorer:
    """A transformers ``Dinov2Model`` with its image processor."""

    def __init__(self, model: Any, processor: Any, device: str) -> None:
        self.model = model
        self.processor = processor
        self.device = device
        self.dim = int(model.config.hidden_size)

    @classmethod
    def from_dir(cls, path: Path, device: str = "cpu") -> DinoScorer:
        from transformers import AutoImageProcessor, AutoModel

        model = AutoModel.from_pretrained(path).to(device).eval()
        return cls(model, AutoImageProcessor.from_pretrained(path), device)

    def embed_images(self, images: Sequence[Image.Image], batch_size: int = 32) -> np.ndarray:
        """One L2-normalised CLS row per image."""
        import torch

        rows = [np.zeros((0, self.dim), np.float32)]
        for start in range(0, len(images), batch_size):
            batch = [im.convert("RGB") for im in images[start:start + batch_size]]
            pixels = self.processor(images=batch, return_tensors="pt")["pixel_values"].to(self.device)
            with torch.inference_mode():
                rows.append(self.model(pixel_values=pixels).pooler_output.float().cpu().numpy())
        x = np.concatenate(rows)
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
