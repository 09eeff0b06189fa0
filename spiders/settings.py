"""Scrapy settings derived from ``CrawlConfig``: bounds, politeness and our components.

Why derive instead of a static settings module: every bound the user sets in a profile must
reach Scrapy, and nothing else should (no telnet console, no remote-control server).
"""

from __future__ import annotations

from typing import Any

from lora_factory.config import CrawlConfig

from .middlewares import ALLOW_SETTING

PAGE_MAX_BYTES = 10 * 1024 * 1024  # HTML pages; images use CrawlConfig.max_image_bytes


def scrapy_settings(config: CrawlConfig) -> dict[str, Any]:
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
        "CONCURRENT_REQUESTS": max(16, config.concurrent_requests_per_domain),
        "COOKIES_ENABLED": False,
        # Bounds. The spider enforces max_pages and max_depth itself (it stops following links);
        # DEPTH_LIMIT is the backstop (0 means "no limit" to Scrapy, hence the spider's check).
        # Image requests reset their depth, so DEPTH_LIMIT only ever applies to pages.
        "DEPTH_LIMIT": config.max_depth,
        "CLOSESPIDER_ITEMCOUNT": config.max_images,
        "CLOSESPIDER_TIMEOUT": config.timeout_s,
        "DOWNLOAD_TIMEOUT": min(30.0, config.timeout_s),
        "DOWNLOAD_MAXSIZE": max(PAGE_MAX_BYTES, config.max_image_bytes),
        "RETRY_TIMES": 1,
        # Breadth-first, so a max_pages bound keeps the pages closest to the seeds.
        "DEPTH_PRIORITY": 1,
        "SCHEDULER_DISK_QUEUE": "scrapy.squeues.PickleFifoDiskQueue",
        "SCHEDULER_MEMORY_QUEUE": "scrapy.squeues.FifoMemoryQueue",
        # Our components.
        ALLOW_SETTING: config.allow_private_addresses,
        "DOWNLOADER_MIDDLEWARES": {
            # Before OffsiteMiddleware (50) and RobotsTxtMiddleware (100): a refused host is
            # never contacted, not even for robots.txt.
            "spiders.middlewares.PrivateAddressMiddleware": 40,
        },
        "ITEM_PIPELINES": {"spiders.pipelines.ContentStorePipeline": 300},
        # No listening sockets: Scrapy 2.19 enables a telnet console and an HTTP remote-control
        # server (which runs posted Python code and writes job files to the home dir) by default.
        "TELNETCONSOLE_ENABLED": False,
        "REMOTE_CONTROL_ENABLED": False,
        "LOG_LEVEL": "INFO",
    }
