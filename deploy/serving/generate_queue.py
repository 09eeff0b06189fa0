"""The bounded queue in front of image generation. Generating is CPU-bound and takes seconds:
run on the event loop or in the shared request thread pool it would hold up ``/feedback`` and
``/health``. It runs on one thread of its own (the adapter pool serves one request at a time
anyway) with at most ``max_waiting`` requests queued behind the running one; past that a
request is refused at once (429 with Retry-After) instead of piling up.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")


class GenerateQueue:
    def __init__(self, max_waiting: int) -> None:
        self.capacity = 1 + max_waiting  # the running one and those waiting behind it
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="generate")
        self._lock = threading.Lock()
        self._held = 0
        self._mean_s = 1.0  # running mean of a generation's duration, for Retry-After

    def held(self) -> int:
        """Generations running or waiting now."""
        return self._held

    def submit(self, fn: Callable[..., T], *args: Any) -> Future[T] | None:
        """``fn(*args)`` on the generation thread, or None when the queue is full."""
        with self._lock:
            if self._held >= self.capacity:
                return None
            self._held += 1
        try:
            return self._executor.submit(self._timed, fn, *args)
        except RuntimeError:  # shut down
            self._release(None)
            raise

    def retry_after(self) -> int:
        """Seconds until a place is likely free: the mean duration times the requests ahead."""
        return max(1, math.ceil(self._mean_s * self._held))

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)

    def _timed(self, fn: Callable[..., T], *args: Any) -> T:
        start = time.perf_counter()
        try:
            return fn(*args)
        finally:
            self._release(time.perf_counter() - start)

    def _release(self, seconds: float | None) -> None:
        with self._lock:
            self._held -= 1
            if seconds is not None:
                self._mean_s = 0.8 * self._mean_s + 0.2 * seconds
