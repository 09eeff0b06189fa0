"""Wikimedia Commons: topic -> image candidates through the MediaWiki Action API.

Two documented queries find files (namespace 6):
``action=query&list=search&srsearch=<topic>&srnamespace=6`` and
``action=query&list=categorymembers&cmtitle=Category:<topic>&cmtype=file``; both page with the
API's ``continue`` object (bounded by ``max_results`` and ``max_requests``). Their titles are
then resolved in batches of 50 with ``prop=imageinfo&iiprop=url|size|mime|extmetadata``, whose
``extmetadata`` gives the licence (``LicenseShortName``/``License``/``LicenseUrl``), the author
(``Artist``, HTML) and the description (``ImageDescription``, HTML). ``formatversion=2`` is
asked for (``query.pages`` a list); the legacy dict form is read too.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from lora_factory.errors import StageError

from ._http import DEFAULT_TIMEOUT_S, fetch_json
from .candidate import ImageCandidate
from .licences import licence_id, strip_html

WHAT = "Wikimedia Commons"
DEFAULT_API_URL = "https://commons.wikimedia.org/w/api.php"
TITLES_PER_REQUEST = 50  # the API's limit on ``titles`` for ordinary clients
IMAGE_MIMES = ("image/jpeg", "image/png", "image/gif", "image/webp", "image/tiff", "image/bmp")


def api_get(
    api_url: str, params: dict[str, Any], user_agent: str, timeout_s: float = DEFAULT_TIMEOUT_S
) -> dict[str, Any]:
    """One API call (``format=json&formatversion=2`` added); an ``error`` answer is a ``StageError``."""
    query = {"action": "query", "format": "json", "formatversion": "2", **params}
    sep = "&" if "?" in api_url else "?"
    data = fetch_json(f"{api_url}{sep}{urlencode(query)}", user_agent, WHAT, timeout_s)
    if isinstance(data.get("error"), dict):
        err = data["error"]
        raise StageError(f"{WHAT} API error {err.get('code', '?')}: {err.get('info', 'no details')}")
    return data


def _paged_titles(
    api_url: str, params: dict[str, Any], key: str, user_agent: str, limit: int,
    max_requests: int, timeout_s: float,
) -> list[str]:
    """File titles from a ``list=`` query, following ``continue`` until ``limit`` or ``max_requests``."""
    titles: list[str] = []
    cont: dict[str, Any] = {}
    for _ in range(max_requests):
        data = api_get(api_url, {**params, **cont}, user_agent, timeout_s)
        for entry in (data.get("query") or {}).get(key) or []:
            title = entry.get("title")
            if entry.get("ns", 6) == 6 and isinstance(title, str) and title not in titles:
                titles.append(title)
        if len(titles) >= limit or not isinstance(data.get("continue"), dict):
            break
        cont = data["continue"]
    return titles[:limit]


def search_titles(
    topic: str, api_url: str = DEFAULT_API_URL, user_agent: str = "LoRAFactoryBot/0.1",
    max_results: int = 50, max_requests: int = 5, timeout_s: float = DEFAULT_TIMEOUT_S,
) -> list[str]:
    """``list=search`` in the File namespace: up to ``max_results`` file titles."""
    params = {"list": "search", "srsearch": topic, "srnamespace": "6",
              "srlimit": str(min(max_results, 50)), "srprop": ""}
    return _paged_titles(api_url, params, "search", user_agent, max_results, max_requests, timeout_s)


def category_titles(
    category: str, api_url: str = DEFAULT_API_URL, user_agent: str = "LoRAFactoryBot/0.1",
    max_results: int = 50, max_requests: int = 5, timeout_s: float = DEFAULT_TIMEOUT_S,
) -> list[str]:
    """``list=categorymembers&cmtype=file`` of ``Category:<category>``: up to ``max_results`` titles."""
    title = category if category.lower().startswith("category:") else f"Category:{category}"
    params = {"list": "categorymembers", "cmtitle": title, "cmtype": "file",
              "cmlimit": str(min(max_results, 50))}
    return _paged_titles(
        api_url, params, "categorymembers", user_agent, max_results, max_requests, timeout_s
    )


def _meta(ext: dict[str, Any], name: str) -> str | None:
    field = ext.get(name)
    value = field.get("value") if isinstance(field, dict) else None
    return value if isinstance(value, str) and value.strip() else None


def candidate_from_page(topic: str, page: dict[str, Any]) -> ImageCandidate | None:
    """An ``imageinfo`` page -> a candidate; None for a missing page or a non-image file."""
    infos = page.get("imageinfo") or []
    if page.get("missing") or not infos:
        return None
    info = infos[0]
    url, mime = info.get("url"), info.get("mime")
    if not isinstance(url, str) or (mime and mime not in IMAGE_MIMES):
        return None
    ext = info.get("extmetadata") or {}
    title = page.get("title")
    licence_url = _meta(ext, "LicenseUrl")
    return ImageCandidate(
        topic=topic,
        image_url=url,
        page_url=info.get("descriptionurl") or url,
        license=licence_id(_meta(ext, "LicenseShortName"), _meta(ext, "License"), url=licence_url),
        license_url=licence_url,
        author=strip_html(_meta(ext, "Artist")),
        title=strip_html(_meta(ext, "ObjectName")) or (title.removeprefix("File:") if title else None),
        description=strip_html(_meta(ext, "ImageDescription")),
        attribution=strip_html(_meta(ext, "Attribution")),
        source="wikimedia",
        width=info.get("width"),
        height=info.get("height"),
        mime_type=mime,
    )


def image_infos(
    topic: str, titles: list[str], api_url: str = DEFAULT_API_URL,
    user_agent: str = "LoRAFactoryBot/0.1", timeout_s: float = DEFAULT_TIMEOUT_S,
) -> list[ImageCandidate]:
    """Resolve file titles with ``prop=imageinfo`` (50 per request), in the titles' order."""
    by_title: dict[str, ImageCandidate] = {}
    for start in range(0, len(titles), TITLES_PER_REQUEST):
        batch = titles[start:start + TITLES_PER_REQUEST]
        data = api_get(api_url, {
            "prop": "imageinfo", "titles": "|".join(batch),
            "iiprop": "url|size|mime|extmetadata", "iiextmetadatalanguage": "en",
        }, user_agent, timeout_s)
        pages = (data.get("query") or {}).get("pages") or []
        if isinstance(pages, dict):  # formatversion=1: keyed by page id
            pages = list(pages.values())
        for page in pages:
            if isinstance(page, dict) and (c := candidate_from_page(topic, page)):
                by_title[page.get("title", "")] = c
    return [by_title[t] for t in titles if t in by_title]


def wikimedia_candidates(
    topic: str, api_url: str = DEFAULT_API_URL, user_agent: str = "LoRAFactoryBot/0.1",
    max_results: int = 50, use_category: bool = True, use_search: bool = True,
    max_requests: int = 5, timeout_s: float = DEFAULT_TIMEOUT_S,
) -> list[ImageCandidate]:
    """Up to ``max_results`` image candidates for ``topic``: ``Category:<topic>`` members first,
    then search results, de-duplicated. Raises ``StageError`` when the API fails."""
    titles: list[str] = []
    if use_category:
        titles += category_titles(topic, api_url, user_agent, max_results, max_requests, timeout_s)
    if use_search and len(titles) < max_results:
        for t in search_titles(topic, api_url, user_agent, max_results, max_requests, timeout_s):
            if t not in titles:
                titles.append(t)
    return image_infos(topic, titles[:max_results], api_url, user_agent, timeout_s)
