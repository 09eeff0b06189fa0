"""Scrapy settings derived from the crawl spec: bounds, politeness, the guard and our components.

Why derive instead of a static settings module: every bound the user sets in a profile must
reach Scrapy, and nothing else should (no telnet console, no remote-control server, no download
handler but http(s)).
"""

from __future__ import annotations

from typing import Any

from lora_factory.config import CrawlConfig

from .resolver import ALLOW_LOOPBACK_SETTING, ALLOW_SETTING, RESOLVE_TIMEOUT_S
from .spec import Frontier

PAGE_MAX_BYTES = 10 * 1024 * 1024  # HTML pages; images use CrawlConfig.max_image_bytes


def scrapy_settings(config: CrawlConfig, frontier: Frontier | None = None) -> dict[str, Any]:
    """With a ``frontier``: the shared Redis frontier of a distributed run (``spiders.frontier``)."""
    settings = _base_settings(config)
    if frontier is not None:
        from .frontier import frontier_settings

        settings.update(frontier_settings(config, frontier))
    return settings


def _base_settings(config: CrawlConfig) -> dict[str, Any]:
    return {
        "BOT_NAME": "lora-factory",
        "USER_AGENT": config.user_agent,
        # Politeness.
        "ROBOTSTXT_OBEY": config.obey_robots,
        "AUTOTHROTTLE_ENABLED": config.autothrottle,
        "AUTOTHROTTLE_START_DELAY": max(config.download_delay_s, 1.0),
        "AUTOTHROTTLE_MAX_DELAY": max(config.download_delay_s, 30.0),
        "DOWNLOAD_DELAY": config.download_delay_s,
        "CONCURRENT_REQUESTS_PER_DOMAIN": config.concurrent_requests_per_domain,
        "CONCURRENT_REQUESTS": config.concurrent_requests,
        "COOKIES_ENABLED": False,
        # Scrapy 2.19 starts CONCURRENT_ITEMS asyncio tasks for *every* callback's output
        # (scrapy.utils.asyncio._parallel_asyncio); the default 100 dominated the CPU profile,
        # and a page yields only a handful of requests, an image one item.
        "CONCURRENT_ITEMS": 8,
        # Bounds. The spider enforces max_pages, max_depth and the image bounds itself (they
        # must count what a resumed crawl already did); DEPTH_LIMIT is a backstop for pages
        # (image requests reset their depth). The wall clock is Scrapy's CLOSESPIDER_TIMEOUT.
        "DEPTH_LIMIT": config.max_depth,
        "CLOSESPIDER_TIMEOUT": config.timeout_s,
        "DOWNLOAD_TIMEOUT": config.download_timeout_s,
        # Pages: PAGE_MAX_BYTES; images get max_image_bytes per request (meta download_maxsize).
        "DOWNLOAD_MAXSIZE": PAGE_MAX_BYTES,
        "DOWNLOAD_WARNSIZE": PAGE_MAX_BYTES // 2,
        "REDIRECT_MAX_TIMES": config.max_redirects,
        "METAREFRESH_ENABLED": False,
        "RETRY_TIMES": 1,
        # Breadth-first, so a max_pages bound keeps the pages closest to the seeds.
        "DEPTH_PRIORITY": 1,
        "SCHEDULER_DISK_QUEUE": "scrapy.squeues.PickleFifoDiskQueue",
        "SCHEDULER_MEMORY_QUEUE": "scrapy.squeues.FifoMemoryQueue",
        # The guard (spiders.guard): http(s) only, public addresses only, each host resolved
        # once and pinned by our resolver; no handler for file:, ftp:, data: or s3: at all.
        ALLOW_SETTING: config.allow_private_addresses,
        ALLOW_LOOPBACK_SETTING: config.allow_loopback,
        "TWISTED_DNS_RESOLVER": "spiders.resolver.GuardedResolver",
        "DNS_TIMEOUT": RESOLVE_TIMEOUT_S,
        "DOWNLOAD_HANDLERS": {"file": None, "ftp": None, "data": None, "s3": None},
        "DOWNLOADER_MIDDLEWARES": {
            # Before OffsiteMiddleware (50) and RobotsTxtMiddleware (100): a refused host is
            # never contacted, not even for robots.txt.
            "spiders.middlewares.AddressGuardMiddleware": 40,
        },
        "ITEM_PIPELINES": {"spiders.pipelines.ContentStorePipeline": 300},
        # No listening sockets: Scrapy 2.19 enables a telnet console and an HTTP remote-control
        # server (which runs posted Python code and writes job files to the home dir) by default.
        "TELNETCONSOLE_ENABLED": False,
        "REMOTE_CONTROL_ENABLED": False,
        "LOG_LEVEL": "INFO",
    }
