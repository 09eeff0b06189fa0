"""A tiny chat LM: ``Qwen2ForCausalLM`` at toy widths with a Qwen2 tokenizer and a ChatML template.

Why Qwen2: the default tagger is ``Qwen/Qwen2.5-0.5B-Instruct``; the tiny model goes through the
same ``AutoTokenizer`` / ``apply_chat_template`` / ``AutoModelForCausalLM.generate`` path.
transformers 5 always loads a qwen2 model's tokenizer as ``Qwen2Tokenizer`` (GPT-2 style
byte-level BPE), whatever ``tokenizer_config.json`` says, so the tiny tokenizer has to be one.
Its vocabulary: the 256 byte symbols plus CLIP's word-internal merges (those without the
end-of-word marker), which are valid byte-level merges. Random outputs then decode to word
pieces instead of stray bytes, which keeps downstream tag parsing honest.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lora_factory.models.clip_tokenizer import END_OF_WORD, byte_to_unicode, clip_vocab_and_merges
from lora_factory.models.seeding import seeded

END_OF_TEXT, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"

# ChatML, the format Qwen2.5 instruct models are trained on.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

_NUM_MERGES = 14667  # CLIP merges without END_OF_WORD; checked when the vocabulary is built
_VOCAB_SIZE = 256 + _NUM_MERGES + 3

TAGGER_CONFIG: dict[str, Any] = {
    "vocab_size": _VOCAB_SIZE,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 4096,  # prompts carry a JSON schema: >1024 tokens in this vocabulary
    "tie_word_embeddings": True,
    "bos_token_id": _VOCAB_SIZE - 3,  # <|endoftext|>, as in Qwen2.5
    "eos_token_id": _VOCAB_SIZE - 1,  # <|im_end|>
    "pad_token_id": _VOCAB_SIZE - 3,
}


def byte_level_vocab() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Byte symbols + CLIP's word-internal merges + the three Qwen special tokens."""
    _, clip_merges = clip_vocab_and_merges()
    merges = [m for m in clip_merges if not m[1].endswith(END_OF_WORD)]
    if len(merges) != _NUM_MERGES:
        raise ValueError(f"expected {_NUM_MERGES} word-internal CLIP merges, found {len(merges)}")
    tokens = [
        *byte_to_unicode().values(),
        *("".join(m) for m in merges),
        END_OF_TEXT,
        IM_START,
        IM_END,
    ]
    return {token: i for i, token in enumerate(tokens)}, merges


def build_tagger(out_dir: Path, seed: int) -> None:
    """Write a Qwen2 causal LM, its generation config and a chat tokenizer to ``out_dir``."""
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM, Qwen2Tokenizer

    vocab, merges = byte_level_vocab()
    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        eos_token=IM_END,
        pad_token=END_OF_TEXT,
        extra_special_tokens=[IM_START, IM_END],
        model_max_length=TAGGER_CONFIG["max_position_embeddings"],
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    with seeded(seed):
        model = Qwen2ForCausalLM(Qwen2Config(**TAGGER_CONFIG))
    # Stop on either end marker and decode greedily unless the caller asks otherwise.
    model.generation_config = GenerationConfig(
        bos_token_id=TAGGER_CONFIG["bos_token_id"],
        eos_token_id=[TAGGER_CONFIG["eos_token_id"], TAGGER_CONFIG["pad_token_id"]],
        pad_token_id=TAGGER_CONFIG["pad_token_id"],
        do_sample=False,
    )
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
