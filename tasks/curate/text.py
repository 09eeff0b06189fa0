"""The page text around an image: cleaned into caption material, with its language and ad check.

Why: alt/title/figure texts carry boilerplate ("click to enlarge"), file names ("IMG_1234.jpg")
and ads; semantic dedup and alignment must judge the words a caption would use, not the noise.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence

import numpy as np

_AD = re.compile(
    r"^\s*(advertisement|advert|ad|ads|sponsored( content)?|promoted|banner( ad)?|buy now|"
    r"shop now|sale|special offer)\s*$",
    re.IGNORECASE,
)


def is_ad_text(text: str | None) -> bool:
    """The whole text is an ad label ("advertisement", "sponsored", "buy now", ...)."""
    return bool(text) and bool(_AD.match(unicodedata.normalize("NFKC", text or "")))


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
