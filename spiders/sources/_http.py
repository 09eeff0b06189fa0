"""One bounded HTTP GET for the crawl's source adapters (sitemaps, Wikimedia Commons, Openverse).

Why urllib and not Scrapy: sources run in the parent before the crawl starts, to turn a topic
into seed pages or image candidates; they make a handful of small requests, each with a short
timeout and a byte cap, and every failure becomes one ``StageError`` line.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urlsplit

from lora_factory.errors import StageError

DEFAULT_TIMEOUT_S = 10.0
MAX_RESPONSE_BYTES = 10 * 1024 * 1024


def fetch_bytes(
    url: str,
    user_agent: str,
    what: str,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    max_bytes: int = MAX_RESPONSE_BYTES,
) -> bytes:
    """GET ``url`` and return its body; ``what`` names the source in the error ("Openverse").

    Raises ``StageError`` on a non-http(s) URL, an HTTP error status, a network error or
    timeout, and a body larger than ``max_bytes``.
    """
    if urlsplit(url).scheme not in ("http", "https"):
        raise StageError(f"{what}: {url!r} is not an http(s) URL: fix the configured URL")
    request = urllib.request.Request(
        url, headers={"User-Agent": user_agent, "Accept": "application/json, application/xml, */*"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310
            body: bytes = response.read(max_bytes + 1)
    except urllib.error.HTTPError as exc:
        raise StageError(
            f"{what} answered HTTP {exc.code} for {url}: check the API URL and query"
        ) from None
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise StageError(f"{what} could not be reached at {url} ({reason}): check the API URL or network") from None
    if len(body) > max_bytes:
        raise StageError(f"{what}: the response from {url} exceeds {max_bytes} bytes")
    return body


def fetch_json(
    url: str, user_agent: str, what: str, timeout_s: float = DEFAULT_TIMEOUT_S
) -> dict[str, Any]:
    """GET ``url`` and decode a JSON object; anything else is a ``StageError``."""
    body = fetch_bytes(url, user_agent, what, timeout_s)
    try:
        data = json.loads(body)
    except ValueError:
        raise StageError(f"{what}: the response from {url} is not JSON") from None
    if not isinstance(data, dict):
        raise StageError(f"{what}: the response from {url} is not a JSON object")
    return data
