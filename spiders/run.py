"""``python -m spiders.run --config crawl.json``: one crawl in this process, outputs in ``out_dir``.

Why a process of its own: Scrapy's Twisted reactor cannot be restarted, so a long-lived parent
(a Prefect worker, the test session) runs each crawl as a child. The contract with the parent:
stdout carries only progress lines ("crawl: 12 pages, 40 images, 3 rejected"), stderr the log,
the exit code success; the results are the files in ``out_dir``.

The JSON config: ``{"topics": {topic: [seed URL, ...]}, "out_dir": path, "crawl": CrawlConfig,
"state_dir": path (journal + image store, kept across attempts), "models_dir": path,
"run_id"/"worker": distributed mode only (see ``spiders.distributed``),
"images": {topic: [provenance with "image_url", ...]} (optional: API sources' images)}``.

SIGINT (sent by the parent when it is interrupted or cancelled) stops the crawl gracefully:
in-flight downloads finish, the journal and the crawl directory are written (finish reason
``interrupted``), so the next attempt continues where this one stopped.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from lora_factory.config import CrawlConfig


def _print_progress(line: str) -> None:
    print(line, flush=True)


def crawl(
    topics_to_urls: dict[str, list[str]],
    out_dir: Path,
    config: CrawlConfig,
    state_dir: Path | None = None,
    models_dir: Path | None = None,
    run_id: str | None = None,
    worker: str | None = None,
    topics_to_images: dict[str, list[dict[str, Any]]] | None = None,
) -> dict[str, Any]:
    """Run the topic spider to completion (or a bound) and write the crawl directory."""
    from scrapy.crawler import AsyncCrawlerProcess

    from .settings import scrapy_settings
    from .topic_spider import TopicSpider

    started = time.monotonic()
    process = AsyncCrawlerProcess(scrapy_settings(config, run_id, worker))
    crawler = process.create_crawler(TopicSpider)
    process.crawl(
        crawler,
        topics_to_urls=topics_to_urls,
        config=config,
        out_dir=out_dir,
        progress=_print_progress,
        state_dir=state_dir,
        models_dir=models_dir,
        topics_to_images=topics_to_images,
    )
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
        "--config", required=True, type=Path, help="JSON file: topics, out_dir, crawl"
    )
    args = parser.parse_args(argv)
    spec = json.loads(args.config.read_text(encoding="utf-8"))
    config = CrawlConfig.model_validate(spec["crawl"])
    state_dir = Path(spec["state_dir"]) if spec.get("state_dir") else None
    models_dir = Path(spec["models_dir"]) if spec.get("models_dir") else None
    stats = crawl(
        spec["topics"], Path(spec["out_dir"]), config, state_dir, models_dir,
        spec.get("run_id"), spec.get("worker"), spec.get("images"),
    )
    _print_progress(
        f"crawl: done, {stats['pages']} pages, {stats['images']} images, {stats['rejected']} rejected "
        f"({stats['finish_reason']}, {stats['duration_s']:.1f} s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
