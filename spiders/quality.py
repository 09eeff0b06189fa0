"""Page quality and relevance: is this page worth mining for images and following?

Why before extraction: an ad farm, a keyword-stuffed doorway page or a page in a language the
captions will not be written in yields images whose text is useless or misleading; rejecting the
page (with its reason in pages.parquet) is cheaper than cleaning its images later.

Checks, in order (the first failure is the reason):
- ``ad_farm``: the share of visible text inside links and ad-like blocks exceeds ``max_ad_ratio``;
- ``low_entropy``: the word distribution's Shannon entropy is below ``min_text_entropy`` bits
  (pages with fewer than ``MIN_WORDS`` words are judged by neither check: a gallery or a
  contact page may have little text besides its navigation);
- ``language``: the body text's language (``spiders.language``: a function-word vote, langdetect
  when the vote is not clear-cut) is not in ``allowed_languages`` (judged on pages with at least
  ``MIN_LANG_CHARS`` characters of text);
- ``off_topic``: MiniLM cosine similarity of the page's title, headings and text to the topic is
  below ``relevance_threshold`` (when set). Links are filtered by the same model before they are
  followed, on their anchor text and URL path.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from parsel import Selector

from .language import detect_language

MIN_WORDS = 30
PAGE_TEXT_CHARS = 1000  # of body text given to the relevance model
_WORD = re.compile(r"[^\W\d_]{2,}", re.UNICODE)
_AD_CLASS = re.compile(
    r"(?:^|[\s_-])(ads?|advert\w*|sponsor\w*|promo\w*|banner|affiliate|adsbygoogle)(?:$|[\s_-])",
    re.IGNORECASE,
)
_VISIBLE = "//body//text()[not(ancestor::script) and not(ancestor::style) and not(ancestor::noscript)]"


@dataclass(frozen=True)
class PageQuality:
    words: int
    entropy: float  # bits per word
    ad_ratio: float
    language: str | None
    reason: str | None  # None: the page passes
    detail: str | None


def _text(nodes: Sequence[str]) -> str:
    return " ".join(" ".join(nodes).split())


def word_entropy(words: Sequence[str]) -> float:
    counts = Counter(w.lower() for w in words)
    total = sum(counts.values())
    if not total:
        return 0.0
    return -sum(c / total * math.log2(c / total) for c in counts.values())


def _is_ad(node: Selector) -> bool:
    return bool(_AD_CLASS.search(f"{node.attrib.get('class', '')} {node.attrib.get('id', '')}"))


def ad_ratio(sel: Selector) -> float:
    """Share of visible text in links or inside elements whose class/id looks like an ad."""
    total = len(_text(sel.xpath(_VISIBLE).getall()))
    if not total:
        return 0.0
    in_links = len(_text(sel.xpath(_VISIBLE.replace("text()[", "text()[ancestor::a and ")).getall()))
    in_ads = 0
    for node in sel.xpath("//body//*[@class or @id]"):
        if not _is_ad(node):
            continue
        if any(_is_ad(parent) for parent in node.xpath("ancestor::*[@class or @id]")):
            continue  # counted with its outermost ad block
        in_ads += len(_text(node.xpath(".//text()[not(ancestor::a)]").getall()))
    return min(1.0, (in_links + in_ads) / total)


def page_quality(
    sel: Selector,
    allowed_languages: Sequence[str],
    min_text_entropy: float,
    max_ad_ratio: float,
) -> PageQuality:
    text = _text(sel.xpath(_VISIBLE).getall())
    words = _WORD.findall(text)
    entropy = word_entropy(words)
    ratio = ad_ratio(sel)
    body_text = _text(sel.xpath(_VISIBLE.replace("text()[", "text()[not(ancestor::a) and ")).getall())
    language = detect_language(body_text)
    reason = detail = None
    if len(words) >= MIN_WORDS and ratio > max_ad_ratio:
        reason, detail = "ad_farm", f"{ratio:.0%} of the text is links or ads > {max_ad_ratio:.0%}"
    elif len(words) >= MIN_WORDS and entropy < min_text_entropy:
        reason, detail = "low_entropy", f"word entropy {entropy:.2f} bits < {min_text_entropy:g}"
    elif allowed_languages and language is not None and language not in allowed_languages:
        reason, detail = "language", f"language {language} not in {list(allowed_languages)}"
    return PageQuality(len(words), round(entropy, 3), round(ratio, 3), language, reason, detail)


def page_summary_text(sel: Selector) -> str:
    """Title, headings and the start of the body text: what the relevance model judges."""
    title = _text(sel.css("title::text").getall())
    heads = _text(sel.css("h1 ::text, h2 ::text").getall())
    body = _text(sel.xpath(_VISIBLE.replace("text()[", "text()[not(ancestor::a) and ")).getall())
    return f"{title}. {heads}. {body[:PAGE_TEXT_CHARS]}"


def link_text(url: str, anchor: str) -> str:
    """Anchor text plus the words of the URL path (``/lighthouse/page-2.html`` -> lighthouse page 2)."""
    path = unquote(urlsplit(url).path)
    path_words = " ".join(re.split(r"[/_.\-]+", path.rsplit(".", 1)[0] if "." in path else path))
    return f"{anchor} {path_words}".strip()


class Relevance:
    """Cosine similarity to a topic with all-MiniLM-L6-v2 (or the configured embedder)."""

    def __init__(self, model_ref: str, cache_dir: Path) -> None:
        from lora_factory.models import load_text_embedder

        self.model = load_text_embedder(model_ref, cache_dir)
        self._topics: dict[str, Any] = {}

    def _topic(self, topic: str) -> Any:
        if topic not in self._topics:
            self._topics[topic] = self.model.encode(
                [topic], normalize_embeddings=True, convert_to_numpy=True
            )[0]
        return self._topics[topic]

    def scores(self, topic: str, texts: Sequence[str]) -> list[float]:
        if not texts:
            return []
        vecs = self.model.encode(
            list(texts), normalize_embeddings=True, convert_to_numpy=True, batch_size=64
        )
        return [float(v) for v in vecs @ self._topic(topic)]
