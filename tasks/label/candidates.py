"""Caption candidates per image: the page's own words, and what the models say about the pixels.

Why several: alt texts are often empty, generic ("photo") or about the page rather than the
picture; captioners describe the pixels but can be dull or wrong; a VLM writes better sentences
but may hallucinate. Keeping every candidate with its source lets the CLIP re-ranking pick, and
the report show why.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .._text import TEXT_FIELDS, clean_text

MODEL_SOURCES = ("captioner", "vlm")
TOPIC = "topic"  # the last resort when nothing else says anything


@dataclass
class Candidate:
    source: str
    text: str
    score: float | None = None  # CLIP image-text cosine, once re-ranked
    hallucination: bool = False

    def row(self) -> dict[str, Any]:
        return {"source": self.source, "text": self.text, "score": self.score,
                "hallucination": self.hallucination}


@dataclass
class ItemCandidates:
    """An item and its caption candidates, in ``label.caption_sources`` order."""

    item: dict[str, Any]
    candidates: list[Candidate] = field(default_factory=list)

    def add(self, source: str, text: str | None, max_words: int) -> None:
        """Add a cleaned candidate unless it is empty or repeats one already there."""
        clean = clean_text(text, max_words)
        if clean and all(c.text.lower() != clean.lower() for c in self.candidates):
            self.candidates.append(Candidate(source, clean))


def page_candidates(items: list[dict[str, Any]], sources: list[str], max_words: int) -> list[ItemCandidates]:
    """Each item with its page-text candidates (alt text, figure caption, title) in config order."""
    out = []
    for item in items:
        ic = ItemCandidates(item)
        for source in sources:
            if source in TEXT_FIELDS:
                ic.add(source, item.get(source), max_words)
        out.append(ic)
    return out


def add_model_candidates(items: list[ItemCandidates], source: str, texts: list[str | None],
                         max_words: int) -> None:
    """Attach one model caption per item (``None``: the model gave none for it)."""
    for ic, text in zip(items, texts, strict=True):
        ic.add(source, text, max_words)


def order_by_sources(ic: ItemCandidates, sources: list[str]) -> None:
    """Candidates in ``sources`` order (the priority when there is no re-ranking); the topic last."""
    rank = {s: i for i, s in enumerate(sources)}
    ic.candidates.sort(key=lambda c: rank.get(c.source, len(rank)))


def add_topic_fallback(ic: ItemCandidates, max_words: int) -> None:
    """An item nothing describes gets its crawl topic, so it is not lost for want of words."""
    if not ic.candidates and ic.item.get("topic"):
        ic.add(TOPIC, ic.item["topic"], max_words)
