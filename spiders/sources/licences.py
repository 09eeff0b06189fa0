"""Licence names as APIs give them -> the crawl's licence ids ("CC-BY-SA-4.0", "CC0-1.0", ...).

The ids match ``spiders.extract`` (pages' licence hints), so curation can filter one column.
"""

from __future__ import annotations

import html
import re

from spiders.extract import licence_from_text, licence_from_url

UNKNOWN = "unknown"
_CODE = re.compile(r"^cc[- ]?(by(?:[- ](?:sa|nc|nd))*)[- ](\d(?:\.\d)?)(?:[- ].*)?$", re.IGNORECASE)
_CC0 = re.compile(r"^cc[- ]?(?:0|zero)(?:[- ]1\.0)?$", re.IGNORECASE)
_PD = re.compile(r"^(?:pd|public[ -]?domain|pdm)(?:[- ].*)?$", re.IGNORECASE)
_TAG = re.compile(r"<[^>]+>")
_SPACE_BEFORE_PUNCT = re.compile(r"\s+([.,;:!?)])")


def strip_html(value: str | None) -> str | None:
    """Text of an HTML fragment (tags dropped, entities decoded, whitespace collapsed); None if empty."""
    if not value:
        return None
    text = " ".join(html.unescape(_TAG.sub(" ", value)).split())
    return _SPACE_BEFORE_PUNCT.sub(r"\1", text) or None


def licence_id(*names: str | None, url: str | None = None) -> str:
    """The first of ``names`` (short names or codes: "CC BY-SA 4.0", "cc-by-sa-4.0", "CC0",
    "Public domain") that is recognised, else the licence URL, else ``"unknown"``."""
    for name in names:
        name = (name and strip_html(name)) or ""
        if not name:
            continue
        if m := _CODE.match(name):
            return f"CC-{re.sub(r'[- ]+', '-', m[1].upper())}-{m[2] if '.' in m[2] else m[2] + '.0'}"
        if _CC0.match(name):
            return "CC0-1.0"
        if _PD.match(name):
            return "public-domain"
        if found := licence_from_text(name):
            return found
    if url and (found := licence_from_url(url)):
        return found
    return UNKNOWN


def openverse_licence(code: str | None, version: str | None, url: str | None = None) -> str:
    """Openverse's ``license`` + ``license_version`` -> id: ("by", "4.0") -> CC-BY-4.0,
    ("cc0", "1.0") -> CC0-1.0, ("pdm", _) -> public-domain; unrecognised -> the URL, else unknown."""
    code = (code or "").strip().lower()
    if code == "cc0":
        return "CC0-1.0"
    if code == "pdm":
        return "public-domain"
    if code and version and re.fullmatch(r"by(?:-(?:sa|nc|nd))*", code):
        return f"CC-{code.upper()}-{version.strip()}"
    if code and version and re.fullmatch(r"(?:nc-)?sampling\+", code):
        return f"CC-{code.upper()}-{version.strip()}"
    if url and (found := licence_from_url(url)):
        return found
    return UNKNOWN
