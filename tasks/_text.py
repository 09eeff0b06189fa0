"""Page text cleaning shared by the stages that turn crawled words into captions (curate, label).

Why: alt/title/figure texts carry boilerplate ("click to enlarge"), file names ("IMG_1234.jpg")
and control characters; dedup, alignment and captions must use the words a caption would use,
not the noise. Not a stage: a helper the stages share, like ``_prefect``.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any

TEXT_FIELDS = ("alt_text", "figure_caption", "title_text")

_BOILERPLATE = re.compile(
    r"\b(click (here )?to (enlarge|zoom|view)|image \d+ of \d+|photo by|stock photo|"
    r"download (now|free)|view larger|thumbnail|see more|opens in a new (tab|window))\b",
    re.IGNORECASE,
)
_FILENAME = re.compile(r"^[\w\-. ]+\.(jpe?g|png|gif|webp|bmp|tiff?|svg)$", re.IGNORECASE)
_CAMERA_NAME = re.compile(r"^(img|dsc|dscn|dcim|pxl|photo|image|screenshot)[_\- ]?\d+", re.IGNORECASE)
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


def candidate_text(item: dict[str, Any]) -> tuple[str, str | None]:
    """(cleaned text, field it came from): the first usable of alt text, figure caption, title."""
    for name in TEXT_FIELDS:
        t = clean_text(item.get(name))
        if t:
            return t, name
    return "", None


def raw_texts(item: dict[str, Any]) -> list[str]:
    return [item[f] for f in TEXT_FIELDS if item.get(f)]
