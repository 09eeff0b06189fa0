"""Requests a worker took from the shared Redis frontier and has not finished: kept in Redis, so
a killed worker's requests are put back instead of lost.

Why: scrapy-redis 0.9.1 pops a request destructively (ZRANGE + ZREMRANGEBYRANK) and has no
acknowledgement or in-flight list. A worker killed with requests in flight lost them for the
whole run: their fingerprints are in the shared seen-set, so no worker schedules them again.

Here a pop moves the serialized request, atomically (one Lua script), from the queue into the
worker's in-flight hash ``<run key>:inflight:<worker>`` (request -> priority score).
``InFlightQueue.forget_finished`` deletes the entries of requests Scrapy's engine no longer
holds (callback or errback run and their output handled, or a redirect/retry hop back in the
queue); the worker calls it on every heartbeat (``spiders.frontier``). ``requeue`` moves a
worker's whole hash back into the queue, atomically.

At least once, not exactly once: a worker killed after a request's outcome was recorded but
before the next heartbeat deleted its entry has that request done again; ``merge_parts`` folds
the duplicate item (same bytes) and page (same URL).
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from scrapy.http import Request
from scrapy_redis.queue import PriorityQueue

_POP = """
local top = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if #top == 0 then return false end
redis.call('ZREM', KEYS[1], top[1])
redis.call('HSET', KEYS[2], top[1], top[2])
return top[1]
"""
_REQUEUE = """
local entries = redis.call('HGETALL', KEYS[2])
for i = 1, #entries, 2 do redis.call('ZADD', KEYS[1], entries[i + 1], entries[i]) end
redis.call('DEL', KEYS[2])
return #entries / 2
"""


class InFlightQueue(PriorityQueue):
    """scrapy-redis's priority queue; with ``inflight_key`` set, a pop keeps the request there
    until ``forget_finished`` sees it done."""

    def __init__(self, server: Any, spider: Any, key: str, serializer: Any = None) -> None:
        super().__init__(server, spider, key, serializer)
        self.inflight_key: str | None = None  # set by the scheduler, which knows the worker
        self.popped: dict[Request, bytes] = {}  # request -> its serialized form in the hash
        self._pop = server.register_script(_POP)

    def pop(self, timeout: int = 0) -> Request | None:
        if self.inflight_key is None:
            return super().pop(timeout)
        data = self._pop(keys=[self.key, self.inflight_key])
        if data is None:
            return None
        request = self._decode_request(data)
        self.popped[request] = data
        return request

    def forget_finished(self, in_progress: Collection[Request]) -> int:
        """Delete the in-flight entries of popped requests not in ``in_progress`` any more."""
        done = [r for r in self.popped if r not in in_progress]
        if done and self.inflight_key is not None:
            self.server.hdel(self.inflight_key, *(self.popped.pop(r) for r in done))
        return len(done)


def requeue(server: Any, queue_key: str, inflight_key: str) -> int:
    """Move every request of an in-flight hash back into the queue; returns how many."""
    return int(server.eval(_REQUEUE, 2, queue_key, inflight_key))
