"""Request-meta keys the crawl's components share: the spider sets them, the frontier, the guard
and the failure handlers read them.

Why a leaf module: the keys are the contract between the spider and the components that run
beside it in the crawler process; keeping them here lets each side import them without
importing the other.
"""

from __future__ import annotations

IMAGE_META = "lora_factory_image"  # an image request's provenance (page, topic, licence ...)
IMAGE_KEY = "lora_factory_image_url"  # the image URL as the page gave it (before redirects)
PAGE_KEY = "lora_factory_page_key"  # the canonical URL the page was requested under
PAGE_URL = "lora_factory_page_url"  # the URL the page was requested under (before redirects)
STOP_META = "lora_factory_stop"  # (reason, detail) when a download was stopped at the headers
NO_FILTER_META = "lora_factory_no_shared_filter"  # opt a request out of the shared seen-set
# Set by Scrapy's redirect and retry middlewares: the request continues one already scheduled.
CONTINUATION_META = ("redirect_times", "retry_times")
