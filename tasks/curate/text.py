"""The page text around an image: cleaned into caption material, with its language and ad check.

Why: alt/title/figure texts carry boilerplate ("click to enlarge"), file names ("IMG_1234.jpg")
and ads; semantic dedup and alignment must judge the words a caption would use, not the noise.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from typing import Any

import numpy as np

TEXT_FIELDS = ("alt_text", "figure_caption", "title_text")

_BOILERPLATE = re.compile(
    r"\b(click (here )?to (enlarge|zoom|view)|image \d+ of \d+|photo by|stock photo|"
    r"download (now|free)|view larger|thumbnail|see more|opens in a new (tab|window))\b",
    re.IGNORECASE,
)
_FILENAME = re.compile(r"^[\w\-. ]+\.(jpe?g|png|gif|webp|bmp|tiff?|svg)$", re.IGNORECASE)
_CAMERA_NAME = re.compile(r"^(img|dsc|dscn|dcim|pxl|photo|image|screenshot)[_\- ]?\d+", re.IGNORECASE)
_AD = re.compile(
    r"^\s*(advertisement|advert|ad|ads|sponsored( content)?|promoted|banner( ad)?|buy now|"
    r"shop now|sale|special offer)\s*$",
    re.IGNORECASE,
)


def clean_text(text: str | None, max_words: int = 77) -> str:
    """Unicode-normalised, whitespace-collapsed text without boilerplate; file names become ''."""
    if not text:
        return ""
    t = unicodedata.normalize("NFKC", text)
    t = "".join(ch for ch in t if unicodedata.category(ch)[0] != "C" or ch in "\n\t")
    t = " ".join(t.split())
    if _FILENAME.match(t) or _CAMERA_NAME.match(t):
        return ""
    t = _BOILERPLATE.sub("", t)
    t = " ".join(t.split()).strip(" -|,;:")
    return " ".join(t.split()[:max_words])


def is_ad_text(text: str | None) -> bool:
    """The whole text is an ad label ("advertisement", "sponsored", "buy now", ...)."""
    return bool(text) and bool(_AD.match(unicodedata.normalize("NFKC", text or "")))


def candidate_text(item: dict[str, Any]) -> tuple[str, str | None]:
    """(cleaned text, field it came from): the first usable of alt text, figure caption, title."""
    for name in TEXT_FIELDS:
        t = clean_text(item.get(name))
        if t:
            return t, name
    return "", None


def raw_texts(item: dict[str, Any]) -> list[str]:
    return [item[f] for f in TEXT_FIELDS if item.get(f)]


def detect_languages(texts: Sequence[str], min_words: int) -> tuple[list[str | None], np.ndarray]:
    """(language code or None, probability) per text; texts under ``min_words`` words are not
    judged (None, nan): langdetect guesses wildly on two-word strings. Seeded, so reproducible."""
    from langdetect import DetectorFactory, detect_langs
    from langdetect.lang_detect_exception import LangDetectException

    DetectorFactory.seed = 0
    langs: list[str | None] = [None] * len(texts)
    probs = np.full(len(texts), np.nan)
    for i, t in enumerate(texts):
        if len(t.split()) < min_words:
            continue
        try:
            best = detect_langs(t)[0]
        except LangDetectException:
            continue
        langs[i], probs[i] = best.lang, best.prob
    return langs, probs
