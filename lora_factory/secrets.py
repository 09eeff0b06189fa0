"""Keep credentials out of everything the factory records or prints.

URL-valued settings (``crawl.redis_url``, ``tracking.uri``, ``store.s3_endpoint_url`` ...) may
carry a user and password (``redis://:pw@host``, ``http://user:pw@mlflow``), and query strings
may carry tokens. The running code uses the real value; run.json, crawl_config.json, MLflow
params and tags, logs and error lines get ``redact``'s copy, in which the secret parts read
``***``. Secrets that come from environment variables (API keys) are only ever named, never
stored: config holds the variable's name.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

MASK = "***"
# Query parameters whose values are credentials (matched case-insensitively, as substrings).
SECRET_PARAMS = ("password", "passwd", "pwd", "secret", "token", "key", "signature", "credential", "auth")
_URL_IN_TEXT = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"<>]+")


def _secret_param(name: str) -> bool:
    low = name.lower()
    return any(word in low for word in SECRET_PARAMS)


def redact_url(url: str) -> str:
    """``url`` with its password (and any credential-like query values) replaced by ``***``.

    A user name beside a password is kept (it helps to tell servers apart); a user part alone
    is masked, since services put tokens there. Text that is not a URL comes back unchanged.
    """
    if "://" not in url:
        return url
    try:
        parts = urlsplit(url)
        password = parts.password
        username = parts.username
    except ValueError:
        return url
    netloc, query = parts.netloc, parts.query
    secret_query = bool(query) and any(_secret_param(k) for k, _ in parse_qsl(query, keep_blank_values=True))
    if "@" not in netloc and not secret_query:
        return url
    if "@" in netloc:
        host = netloc.rsplit("@", 1)[1]
        # user:password -> user:***; a bare user part can be a token (https://<token>@host).
        netloc = f"{username or ''}:{MASK}@{host}" if password is not None else f"{MASK}@{host}"
    if secret_query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(k, MASK if _secret_param(k) else v) for k, v in pairs], safe="*")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def redact_text(text: str) -> str:
    """Every URL inside free text (an error line, a log message) redacted."""
    if "://" not in text:
        return text
    return _URL_IN_TEXT.sub(lambda m: redact_url(m.group(0)), text)


def redact(value: Any) -> Any:
    """A copy of ``value`` (config dump, params, stats) with every URL in it redacted."""
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, Mapping):
        return {k: redact(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(redact(v) for v in value)
    return value


def secrets_in(value: Any) -> list[str]:
    """The credential strings inside ``value``'s URLs (to check that none was written)."""
    found: list[str] = []
    if isinstance(value, str):
        for match in _URL_IN_TEXT.finditer(value):
            try:
                parts = urlsplit(match.group(0))
                if parts.password:
                    found.append(parts.password)
            except ValueError:
                continue
    elif isinstance(value, Mapping):
        for v in value.values():
            found += secrets_in(v)
    elif isinstance(value, list | tuple):
        for v in value:
            found += secrets_in(v)
    return found


def _masked(value: Any) -> bool:
    return isinstance(value, str) and MASK in value and "://" in value


def restore_secrets(saved: Any, current: Any, path: str = "") -> tuple[Any, list[str]]:
    """Put credentials back into ``saved`` (a config as recorded, redacted) for running it again.

    A masked value takes ``current``'s value of the same setting (as given now: flags,
    environment, profile) when that one carries credentials. Returns the restored copy and the
    dotted paths that stay masked (their secret was not given again).
    """
    if _masked(saved):
        if isinstance(current, str) and redact_text(current) != current:
            return current, []
        return saved, [path]
    if isinstance(saved, Mapping):
        out: dict[Any, Any] = {}
        missing: list[str] = []
        for k, v in saved.items():
            cur = current.get(k) if isinstance(current, Mapping) else None
            out[k], lost = restore_secrets(v, cur, f"{path}.{k}" if path else str(k))
            missing += lost
        return out, missing
    if isinstance(saved, list):
        cur_list = current if isinstance(current, list) and len(current) == len(saved) else [None] * len(saved)
        pairs = [restore_secrets(v, c, f"{path}[{i}]") for i, (v, c) in enumerate(zip(saved, cur_list, strict=True))]
        return [v for v, _ in pairs], [p for _, lost in pairs for p in lost]
    return saved, []


class RedactFilter(logging.Filter):
    """A logging filter that takes credentials out of every record's message and traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "://" in message:
            record.msg, record.args = redact_text(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text and "://" in record.exc_text:
            record.exc_text = redact_text(record.exc_text)
        return True
