"""Image captions from a vision-to-text model (BLIP by default) for the label stage.

Why the Auto classes: ``AutoModelForImageTextToText`` (transformers 5's home for BLIP and
VisionEncoderDecoder captioners; ``AutoModelForVision2Seq`` and the ``image-to-text`` pipeline are
gone) plus ``AutoImageProcessor`` and ``AutoTokenizer`` load BLIP, ViT-GPT2 style models and the
tiny BLIP alike, without a processor class that only some repos ship.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from PIL import Image


class Captioner:
    """Greedy (deterministic) captioning of PIL images."""

    def __init__(self, model: Any, image_processor: Any, tokenizer: Any, device: str) -> None:
        self.model = model
        self.image_processor = image_processor
        self.tokenizer = tokenizer
        self.device = device

    @classmethod
    def from_dir(cls, path: Path, device: str = "cpu") -> Captioner:
        import torch
        from transformers import AutoImageProcessor, AutoModelForImageTextToText, AutoTokenizer

        # transformers 5 loads checkpoints in their stored dtype by default; CPU runs want float32.
        dtype = torch.float32 if device == "cpu" else "auto"
        model = AutoModelForImageTextToText.from_pretrained(path, dtype=dtype).to(device).eval()
        return cls(
            model,
            AutoImageProcessor.from_pretrained(path),
            AutoTokenizer.from_pretrained(path),
            device,
        )

    def caption(
        self, images: Sequence[Image.Image], max_new_tokens: int = 20, batch_size: int = 8
    ) -> list[str]:
        """One caption per image, special tokens removed."""
        import torch

        captions: list[str] = []
        for start in range(0, len(images), batch_size):
            batch = [im.convert("RGB") for im in images[start : start + batch_size]]
            inputs = self.image_processor(images=batch, return_tensors="pt").to(self.device)
            with torch.inference_mode():
                ids = self.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
            captions += [
                c.strip() for c in self.tokenizer.batch_decode(ids, skip_special_tokens=True)
            ]
        return captions
