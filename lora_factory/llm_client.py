"""An OpenAI-compatible chat client (vLLM, Ollama, llama.cpp server, OpenAI): the label stage's
tagger and VLM captioner's way out of the process, and the dataset doctor's narrative writer's.
In the kernel (stdlib HTTP, no other layer) so the stages and ``datatools`` can share it.

Why its own client (stdlib HTTP, no SDK): the label stage needs exactly one route
(``POST {base_url}/chat/completions``) and precise control of what a flaky local server does to a
run. Bounded concurrency is the caller's thread pool; this client adds
- a shared rate limit (requests per second, across threads);
- retries with exponential backoff for 429 (``Retry-After`` honoured), 5xx, timeouts, refused or
  dropped connections and unreadable response bodies;
- a dead-endpoint switch: once the endpoint is found unreachable (retries spent) or refuses us
  (401/403/404), later calls fail at once, so the fallback takes over without a wait per image;
- a response cache keyed by the hash of everything that decides the answer (endpoint, model,
  messages, schema, settings; never the key), so re-runs cost nothing.

The API key is read from the environment variable the config names, at request time, and only
ever goes into the ``Authorization`` header: never into a log line, an error, the cache or MLflow.
"""

from __future__ import annotations

import email.utils
import hashlib
import http.client
import json
import os
import random
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lora_factory.config import LlmEndpointConfig
from lora_factory.secrets import redact_url

_RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}
_DEAD_STATUS = {401, 403, 404}


class EndpointError(Exception):
    """A request failed for good (retries spent, or an answer retrying cannot change)."""


@dataclass
class Counters:
    """Counters bumped from several threads; ``as_dict`` for metrics."""

    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **counts: int) -> None:
        with self._lock:
            for k, v in counts.items():
                setattr(self, k, getattr(self, k) + v)

    def as_dict(self) -> dict[str, int]:
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}


@dataclass
class CallStats(Counters):
    """The client's counters, logged as the stage's metrics."""

    requests: int = 0  # HTTP requests sent (retries included)
    cached: int = 0  # answers served from the cache
    http_retries: int = 0  # 429 / 5xx / timeouts / connection errors retried
    failures: int = 0  # calls that raised EndpointError


class RateLimiter:
    """At most ``per_second`` starts per second across threads (evenly spaced)."""

    def __init__(self, per_second: float | None, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.interval = 1.0 / per_second if per_second else 0.0
        self.clock, self.sleep = clock, sleep
        self._next = 0.0
        self._lock = threading.Lock()

    def acquire(self) -> None:
        if not self.interval:
            return
        with self._lock:
            now = self.clock()
            start = max(now, self._next)
            self._next = start + self.interval
        if start > now:
            self.sleep(start - now)


class ResponseCache:
    """Answers on disk, one JSON file per request hash (``<root>/<2 hex>/<hash>.json``)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    @staticmethod
    def key(identity: Mapping[str, Any]) -> str:
        return hashlib.sha256(json.dumps(identity, sort_keys=True, ensure_ascii=False).encode()).hexdigest()

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> str | None:
        try:
            return json.loads(self._path(key).read_text(encoding="utf-8"))["content"]
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def put(self, key: str, content: str, model: str) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_text(json.dumps({"content": content, "model": model, "at": time.time()}), encoding="utf-8")
        tmp.replace(path)


class ChatClient:
    """``chat(messages, schema)`` -> the assistant's text, through retries, rate limit and cache."""

    def __init__(self, cfg: LlmEndpointConfig, cache: ResponseCache | None = None,
                 environ: Mapping[str, str] | None = None, sleep: Callable[[float], None] = time.sleep,
                 seed: int = 0) -> None:
        self.cfg = cfg
        self.cache = cache
        self.environ = os.environ if environ is None else environ
        self.sleep = sleep
        self.limiter = RateLimiter(cfg.requests_per_second, sleep=sleep)
        self.stats = CallStats()
        self.url = cfg.base_url.rstrip("/") + "/chat/completions"
        self.shown_url = redact_url(self.url)
        self.dead: str | None = None  # why the endpoint is not called any more
        self._random = random.Random(seed)
        self._lock = threading.Lock()

    # -- public ---------------------------------------------------------------------------
    def chat(self, messages: list[dict[str, Any]], schema: dict[str, Any] | None = None) -> str:
        body: dict[str, Any] = {"model": self.cfg.model, "messages": messages,
                                "temperature": self.cfg.temperature, "max_tokens": self.cfg.max_tokens}
        if schema is not None:
            body["response_format"] = {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}}
        key = ResponseCache.key({"url": self.shown_url, **body})
        if self.cache is not None and (hit := self.cache.get(key)) is not None:
            self.stats.add(cached=1)
            return hit
        try:
            content = self._send(body)
        except EndpointError:
            self.stats.add(failures=1)
            raise
        if self.cache is not None:
            self.cache.put(key, content, self.cfg.model)
        return content

    # -- one call with retries ------------------------------------------------------------
    def _send(self, body: dict[str, Any]) -> str:
        attempt = 0
        while True:
            if self.dead:
                raise EndpointError(self.dead)
            self.limiter.acquire()
            self.stats.add(requests=1)
            try:
                return self._post(body)
            except _Retryable as e:
                if attempt >= self.cfg.max_retries:
                    self._mark_dead(f"{self.shown_url} failed {attempt + 1} times; last: {e.reason}")
                    raise EndpointError(self.dead or e.reason) from None
                self.stats.add(http_retries=1)
                self.sleep(self._wait(attempt, e.retry_after))
                attempt += 1

    def _wait(self, attempt: int, retry_after: float | None) -> float:
        backoff = self.cfg.backoff_s * (2**attempt)
        with self._lock:
            backoff *= 0.75 + 0.5 * self._random.random()  # jitter: retries of many threads spread
        wait = max(backoff, retry_after or 0.0)
        return min(wait, self.cfg.max_backoff_s)

    def _mark_dead(self, why: str) -> None:
        with self._lock:
            self.dead = self.dead or why

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        name = self.cfg.api_key_env
        key = self.environ.get(name, "") if name else ""
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def _post(self, body: dict[str, Any]) -> str:
        request = urllib.request.Request(self.url, data=json.dumps(body).encode(), headers=self._headers(),
                                         method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.cfg.timeout_s) as response:
                raw = response.read()
        except urllib.error.HTTPError as e:
            raise self._http_error(e) from None
        except (OSError, http.client.HTTPException) as e:  # URLError, timeouts, resets are OSErrors
            reason = getattr(e, "reason", e)
            raise _Retryable(f"{type(e).__name__}: {reason}") from None
        return _content(raw)

    def _http_error(self, e: urllib.error.HTTPError) -> Exception:
        """The exception an error status becomes: retried, or final (and for some, the end of
        the endpoint for this run)."""
        status = e.code
        retry_after = _retry_after(e.headers.get("Retry-After"))
        e.close()
        if status in _RETRY_STATUS:
            return _Retryable(f"HTTP {status}", retry_after)
        if status in _DEAD_STATUS:
            hint = (f"check the key in ${self.cfg.api_key_env}" if status in (401, 403) and self.cfg.api_key_env
                    else "check the endpoint's base_url and model")
            self._mark_dead(f"{self.shown_url} answered HTTP {status}: {hint}")
            return EndpointError(self.dead or f"HTTP {status}")
        return EndpointError(f"{self.shown_url} answered HTTP {status}")


class _Retryable(Exception):
    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


def _retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _content(raw: bytes) -> str:
    """The assistant's text from a chat-completions body; an unreadable body is retried."""
    try:
        data = json.loads(raw)
        content = data["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError):
        raise _Retryable(f"malformed response body ({len(raw)} bytes)") from None
    if not isinstance(content, str):
        raise _Retryable("response has no text content")
    return content


def map_bounded(fn: Callable[[Any], Any], jobs: list[Any], workers: int, desc: str) -> list[Any]:
    """``[fn(job) for job in jobs]`` with at most ``workers`` in flight, in job order, with a
    progress bar (on a terminal). An exception in ``fn`` propagates once the others are done."""
    from concurrent.futures import ThreadPoolExecutor, as_completed

    from tqdm.auto import tqdm

    if workers <= 1 or len(jobs) <= 1:
        return [fn(job) for job in tqdm(jobs, desc=desc, disable=None, leave=False)]
    results: list[Any] = [None] * len(jobs)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="label-llm") as pool:
        futures = {pool.submit(fn, job): i for i, job in enumerate(jobs)}
        for future in tqdm(as_completed(futures), total=len(jobs), desc=desc, disable=None, leave=False):
            results[futures[future]] = future.result()
    return results
