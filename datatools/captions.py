"""Caption formatting: style, the trigger word exactly once where the template puts it, intrinsic
traits left out, and the text encoder's token budget.

Why the real tokenizer: CLIP silently drops everything past 77 tokens (75 after its start and end
tokens), so a caption that looks fine in words may lose its end, or its trigger word. Counting
with the base model's own tokenizer, and trimming at a tag or clause boundary, keeps what trains
and what the user reads the same. Families with a T5 encoder read far longer prompts; the budget
is the longest encoder's, since that one carries the caption.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lora_factory.errors import ConfigError

TRIGGER, CAPTION = "[trigger]", "[caption]"
_CLAUSE = re.compile(r"(?<=[,;.])\s+")
_TOKENIZER_FOLDERS = ("tokenizer", "tokenizer_2", "tokenizer_3")


@dataclass(frozen=True)
class TokenBudget:
    """How many tokens a whole caption may use, and how to count them (specials excluded)."""

    count: Callable[[str], int]
    limit: int
    name: str  # e.g. "CLIPTokenizer (tokenizer), 75 tokens"


def word_budget(limit: int) -> TokenBudget:
    """A stand-in when no tokenizer is at hand (tests of other logic): one token per word."""
    return TokenBudget(lambda text: len(text.split()), limit, f"words, {limit}")


def tokenizer_budget(pipeline_dir: Path, max_tokens: int | None = None) -> TokenBudget:
    """The budget of the base pipeline's longest text encoder, counted with its tokenizer.

    The tokenizers are read from the diffusers layout (``tokenizer``, ``tokenizer_2``, ...);
    ``max_tokens`` lowers the budget further when set.
    """
    from transformers import AutoTokenizer

    best = None
    for folder in _TOKENIZER_FOLDERS:
        path = Path(pipeline_dir) / folder
        if not path.is_dir():
            continue
        tok = AutoTokenizer.from_pretrained(path)
        limit = int(tok.model_max_length) - tok.num_special_tokens_to_add()
        if limit > 10_000:  # "no limit" sentinels (VERY_LARGE_INTEGER): not a budget
            continue
        if best is None or limit > best[1]:
            best = (tok, limit, folder)
    if best is None:
        raise ConfigError(f"models.base: {pipeline_dir} has no tokenizer folder with a length limit "
                          "(tokenizer/, tokenizer_2/...): point it at a diffusers pipeline, or set label.max_tokens")
    tok, limit, folder = best
    if max_tokens is not None:
        limit = min(limit, max_tokens)

    def count(text: str) -> int:
        return len(tok(text, add_special_tokens=False, verbose=False)["input_ids"])

    return TokenBudget(count, limit, f"{type(tok).__name__} ({folder}), {limit} tokens")


def _word(trigger: str) -> re.Pattern[str]:
    return re.compile(rf"(?<![\w-]){re.escape(trigger)}(?![\w-])", re.IGNORECASE)


def trigger_count(caption: str, trigger: str) -> int:
    return len(_word(trigger).findall(caption))


def tidy(text: str) -> str:
    """Collapse spaces and the punctuation left where words were removed."""
    t = " ".join(text.split())
    t = re.sub(r"\s+([,;.:])", r"\1", t)
    t = re.sub(r"([,;])(\s*[,;])+", r"\1", t)
    return t.strip(" ,;:")


def without(text: str, phrases: list[str]) -> str:
    """``text`` with every whole-word occurrence of ``phrases`` removed (case-insensitive)."""
    for phrase in sorted((p for p in phrases if p.strip()), key=len, reverse=True):
        text = _word(phrase.strip()).sub("", text)
    return tidy(text)


def fill(template: str, trigger: str, body: str) -> str:
    return tidy(template.replace(TRIGGER, trigger).replace(CAPTION, body))


def segments(body: str, style: str) -> list[str]:
    """The pieces a caption may lose from its end: tags, or clauses of a sentence."""
    if style == "tags":
        return [t.strip() for t in body.split(",") if t.strip()]
    return [s for s in _CLAUSE.split(body) if s.strip()]


def _join(segs: list[str], style: str) -> str:
    return ", ".join(segs) if style == "tags" else tidy(" ".join(segs))


@dataclass(frozen=True)
class Formatted:
    caption: str
    tokens: int
    trimmed: bool  # was over the budget, cut at a boundary


def format_caption(body: str, trigger: str, template: str, style: str, budget: TokenBudget,
                   traits: list[str] | None = None) -> Formatted:
    """The training caption: traits and stray trigger words out of ``body``, the trigger placed by
    ``template`` once, then trimmed from the end (whole tags or clauses, then words) to fit."""
    clean = without(body, [trigger, *(traits or [])])
    fitted = trim_segments(segments(clean, style), style, budget, lambda b: fill(template, trigger, b))
    if fitted is None:
        tokens = budget.count(fill(template, trigger, ""))
        raise ConfigError(
            f"label.template with the trigger word alone uses {tokens} tokens, over the budget of "
            f"{budget.limit} ({budget.name}): shorten label.template or label.trigger_word")
    return fitted


def trim_segments(segs: list[str], style: str, budget: TokenBudget, render: Callable[[str], str]) -> Formatted | None:
    """``render(body)`` with segments dropped from the end (whole tags or clauses, then words)
    until it fits the budget; None when even the empty body does not fit."""
    segs = list(segs)
    trimmed = False
    while True:
        caption = render(_join(segs, style))
        tokens = budget.count(caption)
        if tokens <= budget.limit:
            return Formatted(caption, tokens, trimmed)
        trimmed = True
        if len(segs) > 1:
            segs.pop()
        elif segs and len(segs[0].split()) > 1:
            segs = [" ".join(segs[0].split()[:-1])]
        elif segs:
            segs = []
        else:
            return None


def trim_caption(caption: str, budget: TokenBudget) -> Formatted:
    """A caption as written, cut from its end to fit (tags when it has commas, else clauses)."""
    style = "tags" if "," in caption else "sentence"
    return trim_segments(segments(caption, style), style, budget, tidy) or Formatted("", 0, True)


def place_trigger_once(caption: str, trigger: str, template: str) -> str:
    """A person's caption with the trigger exactly once: where they put it (first occurrence kept),
    or where the template puts it when they left it out."""
    n = trigger_count(caption, trigger)
    if n == 0:
        return fill(template, trigger, caption)
    if n == 1:
        return tidy(caption)
    first = _word(trigger).search(caption)
    assert first is not None
    rest = _word(trigger).sub("", caption[first.end():])
    return tidy(caption[: first.end()] + rest)


def fit_human(caption: str, trigger: str, template: str, style: str, budget: TokenBudget) -> Formatted:
    """A reviewed caption: kept as written (the trigger fixed to exactly once), and trimmed from its
    end only if it is over the budget; the words up to the trigger are kept as the person wrote them
    (when those alone are too long, the trigger moves to the template's place)."""
    placed = place_trigger_once(caption, trigger, template)
    tokens = budget.count(placed)
    if tokens <= budget.limit:
        return Formatted(placed, tokens, False)
    at = _word(trigger).search(placed)
    assert at is not None
    tail = placed[at.end():]
    sep = re.match(r"[\s,;:.]*", tail)[0]  # type: ignore[index]
    own = placed[: at.start()] + TRIGGER + sep + CAPTION
    if budget.count(fill(own, trigger, "")) > budget.limit:
        own = template
    return format_caption(placed if own == template else tail[len(sep):], trigger, own, style, budget)


def clip_budget(max_tokens: int | None = None) -> TokenBudget:
    """CLIP's own tokenizer and budget (75 tokens after the start and end tokens), for datasets
    inspected outside a run, where no base pipeline names its tokenizer."""
    from lora_factory.models.clip_tokenizer import build_clip_tokenizer

    tok = build_clip_tokenizer()
    limit = int(tok.model_max_length) - tok.num_special_tokens_to_add()
    if max_tokens is not None:
        limit = min(limit, max_tokens)

    def count(text: str) -> int:
        return len(tok(text, add_special_tokens=False, verbose=False)["input_ids"])

    return TokenBudget(count, limit, f"CLIP tokenizer, {limit} tokens")
