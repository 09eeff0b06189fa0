"""The crawl's image and page bounds: counted by this process, or shared by a run's workers.

Why one interface with two implementations: with ``crawl.max_images: 100`` and three workers on
a shared Redis frontier, the run must keep 100 images, not 300, yet the spider and the pipeline
ask the same questions either way ("is this topic full?", "may I keep one more image?").

- ``LocalBounds`` counts what this process's ledger holds (a resumed crawl's journal included).
- ``SharedBounds`` keeps the counts in Redis (``spiders.redis_keys``; a topic's count under its
  ``topic_key``, since a topic is any text a user typed). Keeping an image is
  one atomic reservation (a Lua script checks the total and the topic's count and increments
  both), so concurrent workers can never overshoot. Pages are counted where a request is known
  to be new to the whole run, in the shared scheduler after the shared seen-set
  (``reserve_page``), because a page one worker would request may already be another's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lora_factory.config import CrawlConfig
from lora_factory.names import topic_key

if TYPE_CHECKING:
    from .record import CrawlRecord

_RESERVE_IMAGE = """
local total = tonumber(redis.call('GET', KEYS[1]) or '0')
if total >= tonumber(ARGV[1]) then return 0 end
local limit = tonumber(ARGV[3])
if limit > 0 and tonumber(redis.call('HGET', KEYS[2], ARGV[2]) or '0') >= limit then return 0 end
redis.call('INCR', KEYS[1])
redis.call('HINCRBY', KEYS[2], ARGV[2], 1)
return 1
"""
_RESERVE_PAGE = """
if tonumber(redis.call('GET', KEYS[1]) or '0') >= tonumber(ARGV[1]) then return 0 end
redis.call('INCR', KEYS[1])
return 1
"""


class LocalBounds:
    """Bounds over what this process's ledger holds."""

    shared = False

    def __init__(self, config: CrawlConfig, record: CrawlRecord) -> None:
        self.config = config
        self.record = record

    def images_full(self) -> bool:
        return len(self.record.items) >= self.config.max_images

    def topic_full(self, topic: str | None) -> bool:
        limit = self.config.max_images_per_topic
        return bool(limit) and self.record.per_topic[topic or ""] >= (limit or 0)

    def reserve_image(self, topic: str | None) -> bool:
        """May one more image of ``topic`` be kept? (the ledger counts it once it is added)"""
        return not (self.images_full() or self.topic_full(topic))

    def page_budget_left(self, requested: int) -> bool:
        """May the spider request another page, having requested ``requested``?"""
        return requested < self.config.max_pages


class SharedBounds:
    """Bounds over the whole run, counted in Redis (see the module docstring)."""

    shared = True

    def __init__(self, server: Any, counts: tuple[str, str, str], config: CrawlConfig) -> None:
        """``counts``: the keys of the images, images-per-topic and pages counts (``RunKeys``)."""
        self.server = server
        self.config = config
        self.images_key, self.topics_key, self.pages_key = counts
        self._reserve_image = server.register_script(_RESERVE_IMAGE)
        self._reserve_page = server.register_script(_RESERVE_PAGE)

    def images_full(self) -> bool:
        return int(self.server.get(self.images_key) or 0) >= self.config.max_images

    def topic_full(self, topic: str | None) -> bool:
        limit = self.config.max_images_per_topic
        if not limit:
            return False
        return int(self.server.hget(self.topics_key, topic_key(topic or "")) or 0) >= limit

    def reserve_image(self, topic: str | None) -> bool:
        limit = self.config.max_images_per_topic or 0
        args = [self.config.max_images, topic_key(topic or ""), limit]
        return bool(self._reserve_image(keys=[self.images_key, self.topics_key], args=args))

    def page_budget_left(self, requested: int) -> bool:
        return True  # the shared scheduler draws each new page from the run's budget

    def reserve_page(self) -> bool:
        """Draw one page from the run's ``max_pages`` budget; False once it is used up."""
        return bool(self._reserve_page(keys=[self.pages_key], args=[self.config.max_pages]))
