"""Crawl: the Prefect task that turns topics into seed URLs and runs the Scrapy crawl."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from lora_factory.config import FactoryConfig
from lora_factory.context import RunRef, get_logger, run_stage
from spiders.crawl import run_crawl
from spiders.sources.demo_site import DemoSite, generate_demo_site, serve_site

from ._prefect import stage_task

STAGE = "crawl"


def demo_seed_urls(site: DemoSite, base_url: str, topics: list[str]) -> dict[str, list[str]]:
    """Each topic's first demo page; a topic the demo site has no pages for starts at its index."""
    known = {t.lower(): urls for t, urls in site.topic_urls(base_url).items()}
    index = f"{base_url.rstrip('/')}{site.start_path}"
    return {t: known.get(t.lower(), [index]) for t in topics}


@contextmanager
def seed_urls(cfg: FactoryConfig, topics: list[str]) -> Iterator[dict[str, list[str]]]:
    """Seed URLs per topic; for the demo source, generate and serve the site while crawling."""
    if cfg.crawl.source == "seeds":
        yield {t: cfg.crawl.seeds[t] for t in topics}
        return
    scratch = Path(cfg.home) / "tmp"
    scratch.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=scratch, prefix="demo-site-") as tmp:
        site = generate_demo_site(Path(tmp), seed=cfg.crawl.demo_seed)
        unknown = [t for t in topics if t.lower() not in {s.lower() for s in site.topics}]
        if unknown:
            get_logger().warning(
                "crawl: the demo site has no pages about %s (it has %s); crawling its index for them",
                unknown, ", ".join(site.topics),
            )
        with serve_site(site.root) as base_url:
            yield demo_seed_urls(site, base_url, topics)


@stage_task(STAGE)
def crawl_task(ref: RunRef) -> dict[str, Any]:
    with run_stage(ref, STAGE) as st:
        cfg = st.config
        st.log_params({**cfg.crawl.model_dump(exclude={"seeds"}), "num_seed_topics": len(cfg.crawl.seeds)})
        with seed_urls(cfg, ref.topics) as urls:
            st.log_params({"seed_urls": json.dumps(urls)})
            stats = run_crawl(urls, st.out, cfg.crawl, on_progress=st.log.info)
        st.log_metrics({k: float(v) for k, v in _numeric(stats).items()})
        st.log_artifact(st.out / "crawl_stats.json")
    return stats


def _numeric(stats: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Flatten the crawl stats to MLflow metrics (``rejected.too_small`` ...)."""
    out: dict[str, float] = {}
    for k, v in stats.items():
        if isinstance(v, bool):
            continue
        if isinstance(v, (int, float)):
            out[f"{prefix}{k}"] = float(v)
        elif isinstance(v, dict):
            out.update(_numeric(v, f"{prefix}{k}."))
    return out
