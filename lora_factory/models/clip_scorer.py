"""CLIP embeddings for images and texts, the measure behind curation alignment and CLIP-T/CLIP-I.

Why a wrapper: stages need three things from CLIP (image vectors, text vectors, their cosine) and
should not each learn open_clip's model/transform/tokenizer triple, batching or no-grad handling.
Vectors are L2-normalised float32 numpy arrays, so they can be stored as ``.npy`` and compared with
a dot product.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from PIL import Image


def _l2_normalise(x: np.ndarray) -> np.ndarray:
    x = np.atleast_2d(np.asarray(x, dtype=np.float32))
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


class ClipScorer:
    """An open_clip model with its inference transform and tokenizer."""

    def __init__(
        self,
        model: Any,
        preprocess: Callable[[Any], Any],
        tokenizer: Callable[..., Any],
        device: str,
    ) -> None:
        self.model = model
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.device = device
        self.dim = int(model.visual.output_dim)

    @classmethod
    def from_dir(cls, path: Path, device: str = "cpu") -> ClipScorer:
        """Load a directory in the open_clip hub layout (``open_clip_config.json`` + weights)."""
        import open_clip

        model, _, preprocess = open_clip.create_model_and_transforms(
            f"local-dir:{path}", device=device
        )
        model.eval()
        return cls(model, preprocess, open_clip.get_tokenizer(f"local-dir:{path}"), device)

    def embed_images(self, images: Sequence[Image.Image], batch_size: int = 32) -> np.ndarray:
        """One normalised row per image (any PIL mode; the transform converts to RGB)."""
        import torch

        rows = [np.zeros((0, self.dim), np.float32)]
        for start in range(0, len(images), batch_size):
            batch = torch.stack([self.preprocess(im) for im in images[start : start + batch_size]])
            with torch.inference_mode():
                rows.append(self.model.encode_image(batch.to(self.device)).float().cpu().numpy())
        return _l2_normalise(np.concatenate(rows))

    def embed_texts(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """One normalised row per text; texts past the context length are truncated, as in CLIP."""
        import torch

        rows = [np.zeros((0, self.dim), np.float32)]
        for start in range(0, len(texts), batch_size):
            tokens = self.tokenizer(list(texts[start : start + batch_size]))
            with torch.inference_mode():
                rows.append(self.model.encode_text(tokens.to(self.device)).float().cpu().numpy())
        return _l2_normalise(np.concatenate(rows))

    @staticmethod
    def cosine(image_emb: np.ndarray, text_emb: np.ndarray) -> np.ndarray:
        """Cosine similarities, shape ``(n_images, n_texts)``; single vectors count as one row."""
        return _l2_normalise(image_emb) @ _l2_normalise(text_emb).T
