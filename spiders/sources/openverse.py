"""Openverse: topic -> CC-licensed image candidates through ``GET /v1/images/``.

Documented query: ``q``, ``license_type`` (``all``, ``all-cc``, ``commercial``,
``modification``), ``page_size`` (at most 20 without an API key) and ``page``; the answer has
``result_count``, ``page_count``, ``page`` and ``results``, each result with ``url``,
``foreign_landing_url``, ``license``/``license_version``/``license_url``, ``creator``,
``title`` and ``attribution``. Paging stops at ``max_results``, ``max_pages`` or the last page.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from lora_factory.errors import StageError

from ._http import DEFAULT_TIMEOUT_S, fetch_json
from .candidate import ImageCandidate
from .licences import openverse_licence, strip_html

WHAT = "Openverse"
DEFAULT_API_URL = "https://api.openverse.org/v1/"
ANONYMOUS_PAGE_SIZE = 20


def images_endpoint(api_url: str) -> str:
    """``.../v1/`` or ``.../v1/images/`` or a bare host -> the ``/v1/images/`` endpoint."""
    base = api_url.rstrip("/")
    if base.endswith("/images"):
        return base + "/"
    if base.endswith("/v1"):
        return base + "/images/"
    return base + "/v1/images/"


def candidate_from_result(topic: str, result: dict[str, Any]) -> ImageCandidate | None:
    """One ``results`` entry -> a candidate; None without an http(s) image URL."""
    url = result.get("url")
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        return None
    licence_url = result.get("license_url") or None
    return ImageCandidate(
        topic=topic,
        image_url=url,
        page_url=result.get("foreign_landing_url") or url,
        license=openverse_licence(result.get("license"), result.get("license_version"), licence_url),
        license_url=licence_url,
        author=strip_html(result.get("creator")),
        title=strip_html(result.get("title")),
        description=None,
        attribution=strip_html(result.get("attribution")),
        source="openverse",
        width=result.get("width"),
        height=result.get("height"),
        mime_type=None,
    )


def openverse_candidates(
    topic: str, api_url: str = DEFAULT_API_URL, user_agent: str = "LoRAFactoryBot/0.1",
    max_results: int = 50, license_type: str | None = "all-cc",
    page_size: int = ANONYMOUS_PAGE_SIZE, max_pages: int = 5,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> list[ImageCandidate]:
    """Up to ``max_results`` candidates for ``topic`` (de-duplicated by image URL).

    Raises ``StageError`` when the API fails or answers something that is not a result page.
    """
    endpoint = images_endpoint(api_url)
    out: list[ImageCandidate] = []
    seen: set[str] = set()
    size = max(1, min(page_size, max_results))
    for page in range(1, max_pages + 1):
        params: dict[str, Any] = {"q": topic, "page_size": size, "page": page}
        if license_type:
            params["license_type"] = license_type
        data = fetch_json(f"{endpoint}?{urlencode(params)}", user_agent, WHAT, timeout_s)
        results = data.get("results")
        if not isinstance(results, list):
            detail = data.get("detail") or "no 'results' in the answer"
            raise StageError(f"{WHAT} returned no results page for {topic!r}: {detail}")
        for result in results:
            c = candidate_from_result(topic, result) if isinstance(result, dict) else None
            if c is not None and c.image_url not in seen:
                seen.add(c.image_url)
                out.append(c)
        page_count = data.get("page_count")
        if (len(out) >= max_results or not results
                or (isinstance(page_count, int) and page >= page_count)):
            break
    return out[:max_results]
