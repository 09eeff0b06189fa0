"""The crawl stage: a Scrapy project that turns topics and seed URLs into items with provenance.

Importing this package is cheap (no Scrapy import): ``spiders.crawl.run_crawl`` starts the
crawl in its own process, because Scrapy's reactor cannot be restarted inside one.
"""
