"""A small thread pool for the crawl's blocking per-image work: decode, hash, write.

Why: on the reactor thread every millisecond of that work stalls every download, and the crawl
process otherwise uses one core. Pillow's decoders, hashlib (on more than 2 KiB) and file I/O
release the GIL, so in this pool they run beside the reactor on another core.

Why not the reactor's thread pool (``deferToThread``): it also resolves host names, and its ten
threads would decode up to ten images at once. This pool has one thread per CPU (at most
``MAX_THREADS``), which bounds the memory of images decoded at the same time and the contention
with the reactor thread. It is an asyncio executor: the crawl runs on Scrapy's asyncio reactor,
so a callback awaits the work directly.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

MAX_THREADS = 4
T = TypeVar("T")


def default_threads() -> int:
    return max(1, min(MAX_THREADS, os.cpu_count() or 1))


class WorkPool:
    """``await pool.run(fn, *args)`` runs ``fn`` in a worker thread; its exception propagates."""

    def __init__(self, threads: int | None = None) -> None:
        self.threads = threads or default_threads()
        self._executor: ThreadPoolExecutor | None = None

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self.threads, thread_name_prefix="crawl-work")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def close(self) -> None:
        """Wait for submitted work and stop the threads (the crawl is over)."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
