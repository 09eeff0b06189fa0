"""A tiny DINOv2 image encoder (``Dinov2Model`` + ``BitImageProcessor``), saved with
``save_pretrained`` in the hub layout of ``facebook/dinov2-small``.

Why: evaluate's DINO subject-fidelity metric loads the real model with ``AutoModel`` /
``AutoImageProcessor``; the tiny one goes through the same calls. Its weights are random, so its
numbers carry no meaning (evaluate says so).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lora_factory.models.seeding import seeded

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)

DINO_CONFIG: dict[str, Any] = {
    "model": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "mlp_ratio": 2,
              "image_size": 32, "patch_size": 8},
    "processor": {"size": {"shortest_edge": 32}, "crop_size": {"height": 32, "width": 32},
                  "image_mean": list(_IMAGENET_MEAN), "image_std": list(_IMAGENET_STD)},
}


def build_dino(out_dir: Path, seed: int) -> None:
    """Write ``config.json``, ``model.safetensors`` and ``preprocessor_config.json``."""
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    with seeded(seed):
        model = Dinov2Model(Dinov2Config(**DINO_CONFIG["model"]))
    model.save_pretrained(out_dir, safe_serialization=True)
    BitImageProcessor(do_center_crop=True, **DINO_CONFIG["processor"]).save_pretrained(out_dir)
