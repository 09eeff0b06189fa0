"""``python -m spiders.run --spec -``: one crawl in this process, outputs in the spec's ``out_dir``.

Why a process of its own: Scrapy's Twisted reactor cannot be restarted, so a long-lived parent
(a Prefect worker, the test session) runs each crawl as a child. The contract with the parent:
stdin carries the ``CrawlSpec`` as JSON (``spiders.spec``; on stdin because it may hold a Redis
password), stdout only progress lines ("crawl: 12 pages, 40 images, 3 rejected"), stderr the
log, the exit code success; the results are the files in ``out_dir``.

A ``crawl.source: urls`` list is fetched without Scrapy (``spiders.urlcrawl``), with the same
checks, journal and outputs.

SIGINT (sent by the parent when it is interrupted or cancelled) stops the crawl gracefully:
in-flight downloads finish, the journal and the crawl directory are written (finish reason
``interrupted``), so the next attempt continues where this one stopped.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from .spec import CrawlSpec


def _print_progress(line: str) -> None:
    print(line, flush=True)


def crawl(spec: CrawlSpec) -> dict[str, Any]:
    """Run the crawl to completion (or a bound) and write the crawl directory: a url list
    through ``spiders.urlcrawl`` (no page to parse: no Scrapy), anything else the topic spider."""
    from .urlcrawl import SWITCH_INTERVAL_S, crawl_url_list, uses_url_fetcher

    if uses_url_fetcher(spec):
        sys.setswitchinterval(SWITCH_INTERVAL_S)
        return crawl_url_list(spec, _print_progress)
    from scrapy.crawler import AsyncCrawlerProcess

    from .settings import scrapy_settings
    from .topic_spider import TopicSpider

    started = time.monotonic()
    process = AsyncCrawlerProcess(scrapy_settings(spec.crawl, spec.frontier))
    crawler = process.create_crawler(TopicSpider)
    process.crawl(crawler, spec=spec, progress=_print_progress)
    process.start()
    spider = crawler.spider
    if spider is None:
        raise RuntimeError("the spider did not start; see the log above")
    assert isinstance(spider, TopicSpider)
    stats = crawler.stats.get_stats() if crawler.stats else {}
    summary = spider.record.summary(stats, spider.finish_reason(), time.monotonic() - started)
    return spider.record.write(summary)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m spiders.run", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--spec", required=True, help="the CrawlSpec as JSON: a file, or - for stdin"
    )
    args = parser.parse_args(argv)
    text = sys.stdin.read() if args.spec == "-" else Path(args.spec).read_text(encoding="utf-8")
    stats = crawl(CrawlSpec.model_validate_json(text))
    _print_progress(
        f"crawl: done, {stats['pages']} pages, {stats['images']} images, {stats['rejected']} rejected "
        f"({stats['finish_reason']}, {stats['duration_s']:.1f} s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
