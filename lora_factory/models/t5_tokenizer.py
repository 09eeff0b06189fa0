"""A small T5 tokenizer built offline: a SentencePiece-style Unigram model trained with the
``tokenizers`` library, in T5's layout (``<pad>`` 0, ``</s>`` 1, ``<unk>`` 2, ``▁`` word marks,
``</s>`` appended), as ``transformers.T5TokenizerFast``.

Why trained here: the real T5 vocabulary (32k SentencePiece pieces) cannot be downloaded offline.
The training text is the English word list CLIP's BPE file (shipped inside open_clip) ends up
with: whole words in merge order, which is roughly frequency order. Training is deterministic,
so a tiny model built twice has the same tokenizer.
"""

from __future__ import annotations

import gzip
import json
from typing import TYPE_CHECKING

from lora_factory.models.clip_tokenizer import END_OF_WORD, clip_bpe_path

if TYPE_CHECKING:
    from transformers import T5TokenizerFast

SPECIALS = ("<pad>", "</s>", "<unk>")
T5_VOCAB_SIZE = 1024
_CORPUS_WORDS = 8_000


def corpus_words(limit: int = _CORPUS_WORDS) -> list[str]:
    """The first ``limit`` whole words of CLIP's merge list (ASCII letters only)."""
    text = gzip.decompress(clip_bpe_path().read_bytes()).decode("utf-8")
    words = []
    for line in text.split("\n")[1:]:
        merged = line.replace(" ", "")
        if merged.endswith(END_OF_WORD):
            word = merged[: -len(END_OF_WORD)]
            if word.isascii() and word.isalpha():
                words.append(word)
                if len(words) == limit:
                    break
    return words


def train_unigram(vocab_size: int = T5_VOCAB_SIZE) -> list[tuple[str, float]]:
    """(piece, log-probability) pairs of a Unigram model trained on ``corpus_words``, the special
    tokens first in T5's order."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.Unigram())
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=list(SPECIALS), unk_token="<unk>",
                                      show_progress=False)
    words = corpus_words()
    # Short comma-separated lines of words, as captions are.
    lines = (", ".join(" ".join(words[j:j + 3]) for j in range(i, i + 9, 3)) + "." for i in range(0, len(words), 9))
    tokenizer.train_from_iterator(lines, trainer)
    # The trainer sums in parallel: scores vary in the last bits (~1e-14) from run to run. Rounded,
    # the tokenizer (and so the tiny model's files and cache key) is the same on every build.
    vocab = [(piece, round(float(score), 6)) for piece, score in json.loads(tokenizer.to_str())["model"]["vocab"]]
    return [(s, 0.0) for s in SPECIALS] + [(p, s) for p, s in vocab if p not in SPECIALS]


def build_t5_tokenizer(model_max_length: int) -> T5TokenizerFast:
    """The tokenizer, without T5's 100 sentinel tokens (an encoder for prompts never uses them)."""
    from transformers import T5TokenizerFast

    return T5TokenizerFast(vocab=train_unigram(), extra_ids=0, model_max_length=model_max_length)
