"""Where seed URLs come from: the built-in demo site for now (sitemaps, Wikimedia Commons and
Openverse later). A source yields ``{topic: [seed URL, ...]}`` for ``spiders.crawl.run_crawl``.
"""
