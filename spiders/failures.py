"""Turn a failed request into a short, stable reason token for pages.parquet and rejections.

Why tokens: reports and tests group by reason ("http_404", "robots_txt", "private_address"),
so the spelling must not depend on exception message wording. The address guard's refusals
(``spiders.middlewares.RequestRefused``) carry their own token.
"""

from __future__ import annotations

from scrapy.exceptions import (
    CannotResolveHostError,
    DownloadCancelledError,
    DownloadConnectionRefusedError,
    DownloadTimeoutError,
    IgnoreRequest,
)
from scrapy.spidermiddlewares.httperror import HttpError
from twisted.internet import error as twisted_error
from twisted.python.failure import Failure

from .guard import scheme_refusal, shown_url
from .middlewares import RequestRefused

_BY_TYPE: tuple[tuple[tuple[type[BaseException], ...], str], ...] = (
    ((DownloadConnectionRefusedError, twisted_error.ConnectionRefusedError), "connection_refused"),
    ((DownloadTimeoutError, twisted_error.TimeoutError), "timeout"),
    ((CannotResolveHostError, twisted_error.DNSLookupError), "dns_error"),
    ((DownloadCancelledError,), "too_large"),
)


def failure_reason(failure: Failure) -> tuple[str, str, int | None]:
    """(reason token, one-line detail, HTTP status if there was a response)."""
    exc = failure.value
    detail = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, RequestRefused):
        return exc.reason, detail, None
    if isinstance(exc, HttpError):
        status = exc.response.status
        location = (exc.response.headers.get(b"Location") or b"").decode("latin-1")
        if 300 <= status < 400 and location and (why := scheme_refusal(location)):
            # Scrapy's RedirectMiddleware does not follow it; the 3xx ends here.
            return "unsupported_scheme", f"redirect to {shown_url(location)}: {why}", status
        return f"http_{status}", f"HTTP {status}", status
    for types, reason in _BY_TYPE:
        if isinstance(exc, types):
            if reason == "too_large" and detail == type(exc).__name__:
                detail = "download cancelled: the body grew beyond download_maxsize"
            return reason, detail, None
    if isinstance(exc, IgnoreRequest):
        if "robots.txt" in detail:
            return "robots_txt", detail, None
        if "redirections" in detail:  # RedirectMiddleware: "max redirections reached"
            return "redirect_loop", detail, None
        return "ignored", detail, None
    return "download_error", f"{type(exc).__name__}: {detail}", None
