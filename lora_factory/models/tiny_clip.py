"""A tiny open_clip model (ViT image tower + text transformer) in the hub's open_clip layout.

Why: the CLIP scorer loads ``laion/CLIP-ViT-B-32-...`` through open_clip's ``local-dir:`` schema
on its hub snapshot (``open_clip_config.json`` + ``open_clip_model.safetensors``). Saving the tiny
model with open_clip's own ``save_for_hf`` gives the same files, so one loader serves both.
The text side keeps CLIP's real context length (77) and vocabulary (49408), so open_clip's
``SimpleTokenizer`` applies unchanged.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lora_factory.models.clip_tokenizer import (
    MAX_LENGTH,
    VOCAB_SIZE,
    build_clip_tokenizer,
    write_vocab_files,
)
from lora_factory.models.seeding import seeded

# OpenAI CLIP's normalisation, as the laion checkpoints use.
_MEAN = (0.48145466, 0.4578275, 0.40821073)
_STD = (0.26862954, 0.26130258, 0.27577711)

CLIP_CONFIG: dict[str, Any] = {
    "model_cfg": {
        "embed_dim": 32,
        "vision_cfg": {
            "image_size": 32,
            "patch_size": 8,
            "width": 32,
            "head_width": 16,
            "layers": 2,
        },
        "text_cfg": {
            "context_length": MAX_LENGTH,
            "vocab_size": VOCAB_SIZE,
            "width": 32,
            "heads": 2,
            "layers": 2,
        },
    },
    "preprocess_cfg": {
        "mean": list(_MEAN),
        "std": list(_STD),
        "interpolation": "bicubic",
        "resize_mode": "shortest",
    },
}


def build_clip(out_dir: Path, seed: int) -> None:
    """Write ``open_clip_config.json``, ``open_clip_model.safetensors`` and CLIP tokenizer files."""
    from open_clip.model import CLIP, set_model_preprocess_cfg
    from open_clip.push_to_hf_hub import save_for_hf

    with seeded(seed):
        model = CLIP(**CLIP_CONFIG["model_cfg"])
    set_model_preprocess_cfg(model, dict(CLIP_CONFIG["preprocess_cfg"]))
    save_for_hf(
        model,
        tokenizer=build_clip_tokenizer(),
        model_config=CLIP_CONFIG["model_cfg"],
        save_directory=str(out_dir),
        safe_serialization=True,
    )
    write_vocab_files(out_dir)  # the hub's open_clip repos carry the classic files too
