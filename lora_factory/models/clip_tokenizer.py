"""The CLIP BPE tokenizer as a ``transformers.CLIPTokenizer``, built from open_clip's BPE file.

Why: every SD text encoder uses the OpenAI CLIP tokenizer (49408 tokens). The hub copy of it cannot
be downloaded offline, but open_clip ships the source it was derived from
(``bpe_simple_vocab_16e6.txt.gz``: a list of BPE merges). Deriving the vocabulary from that list
the way CLIP does gives byte-identical token ids, so tiny models use the real tokenizer.

The derivation: 256 byte symbols (through a reversible byte-to-unicode table), the same 256
symbols with the end-of-word marker ``</w>``, one token per merge for the first
49152 - 256 - 2 merges, then ``<|startoftext|>`` and ``<|endoftext|>``.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import CLIPTokenizer

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
END_OF_WORD = "</w>"
VOCAB_SIZE = 49408
MAX_LENGTH = 77
# CLIP's vocabulary budget: 49152 BPE entries, of which 256 are bytes and 2 are special tokens.
_NUM_MERGES = 49152 - 256 - 2


def clip_bpe_path() -> Path:
    """The merge list shipped inside the open_clip package (found without importing torch)."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("open_clip is not installed; it ships the CLIP BPE vocabulary")
    path = Path(next(iter(spec.submodule_search_locations))) / "bpe_simple_vocab_16e6.txt.gz"
    if not path.is_file():
        raise FileNotFoundError(f"CLIP BPE vocabulary not found at {path}")
    return path


def byte_to_unicode() -> dict[int, str]:
    """Map each byte to a printable character, so BPE never sees whitespace or control bytes.

    Printable Latin-1 bytes map to themselves; the other 68 bytes are moved to code points
    256, 257, ... in byte order. The table order (printable ranges first) is the vocabulary order.
    """
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    table = {b: chr(b) for b in printable}
    shifted = (b for b in range(256) if b not in table)
    for offset, b in enumerate(shifted):
        table[b] = chr(256 + offset)
    return table


@lru_cache(maxsize=2)
def clip_vocab_and_merges(
    bpe_path: Path | None = None,
) -> tuple[dict[str, int], tuple[tuple[str, str], ...]]:
    """Token -> id and the ranked merges, derived from the BPE file as CLIP does."""
    text = gzip.decompress((bpe_path or clip_bpe_path()).read_bytes()).decode("utf-8")
    lines = text.split("\n")[1 : _NUM_MERGES + 1]  # line 0 is a version header
    merges = tuple((a, b) for a, b in (line.split() for line in lines))
    symbols = list(byte_to_unicode().values())
    tokens = [
        *symbols,
        *(s + END_OF_WORD for s in symbols),
        *("".join(m) for m in merges),
        BOS_TOKEN,
        EOS_TOKEN,
    ]
    vocab = {token: i for i, token in enumerate(tokens)}
    if len(vocab) != VOCAB_SIZE:
        raise ValueError(f"derived {len(vocab)} CLIP tokens, expected {VOCAB_SIZE}")
    return vocab, merges


def write_vocab_files(out_dir: Path) -> tuple[Path, Path]:
    """Write ``vocab.json`` and ``merges.txt`` in the layout of the hub's CLIP tokenizers.

    transformers 5 only writes ``tokenizer.json``; other readers (older transformers, kohya
    scripts, ComfyUI) still expect the two classic files, so tiny model directories carry both.
    """
    vocab, merges = clip_vocab_and_merges()
    out_dir.mkdir(parents=True, exist_ok=True)
    vocab_file = out_dir / "vocab.json"
    merges_file = out_dir / "merges.txt"
    vocab_file.write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    merges_file.write_text(
        "#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in merges) + "\n", encoding="utf-8"
    )
    return vocab_file, merges_file


def build_clip_tokenizer(
    pad_token: str = EOS_TOKEN, model_max_length: int = MAX_LENGTH
) -> CLIPTokenizer:
    """A ``CLIPTokenizer`` with CLIP's own vocabulary.

    ``pad_token``: SD1.5's tokenizer pads with ``<|endoftext|>``; SDXL's second tokenizer pads with
    ``"!"`` (id 0), which is also what open_clip pads with.
    """
    from transformers import CLIPTokenizer

    vocab, merges = clip_vocab_and_merges()
    return CLIPTokenizer(
        vocab=dict(vocab),
        merges=list(merges),
        pad_token=pad_token,
        model_max_length=model_max_length,
    )
