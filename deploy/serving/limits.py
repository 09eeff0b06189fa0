"""Request limits: a body-size cap (enforced while the body streams in, so a chunked upload
cannot get past it) and a per-client token-bucket rate limit."""

from __future__ import annotations

import json
import math
import threading
import time
from typing import Any


async def _answer(send: Any, status: int, message: str, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    body = json.dumps({"error": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()), *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


class BodyLimitMiddleware:
    """Answer 413 to a request whose body is over ``max_bytes``, declared or streamed. A
    streamed body is cut where it passes the limit and whatever the app answers to the cut body
    is replaced by the 413 (the app's frameworks turn exceptions raised in ``receive`` into 400s)."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_large = f"request body over {self.max_bytes} bytes (serve.max_body_bytes)"
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await _answer(send, 413, too_large)
            return
        seen = {"bytes": 0, "over": False}

        async def counted() -> dict[str, Any]:
            message = await receive()
            if message["type"] == "http.request" and not seen["over"]:
                seen["bytes"] += len(message.get("body", b""))
                if seen["bytes"] > self.max_bytes:  # end the body here; the answer becomes 413
                    seen["over"] = True
                    return {"type": "http.request", "body": b"", "more_body": False}
            return message

        async def replaced(message: dict[str, Any]) -> None:
            if not seen["over"]:
                await send(message)
            elif message["type"] == "http.response.start":
                await _answer(send, 413, too_large)

        await self.app(scope, counted, replaced)


class RateLimiter:
    """A token bucket per key (the client address): ``rate`` requests a second on average, up to
    ``burst`` at once. ``rate == 0`` switches it off."""

    def __init__(self, rate: float, burst: int, max_keys: int = 10_000) -> None:
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, when)
        self._lock = threading.Lock()

    def retry_after(self, key: str) -> int:
        """0 when the request may go ahead (a token is taken), else the seconds to wait."""
        if self.rate <= 0:
            return 0
        now = time.monotonic()
        with self._lock:
            tokens, when = self._buckets.get(key, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - when) * self.rate)
            if tokens >= 1:
                if len(self._buckets) >= self.max_keys and key not in self._buckets:
                    self._buckets.clear()  # bounded memory: forgetting clients only forgives them
                self._buckets[key] = (tokens - 1, now)
                return 0
            self._buckets[key] = (tokens, now)
            return max(1, math.ceil((1 - tokens) / self.rate))
