"""Crawl: the Prefect task that turns topics into seed URLs and runs the Scrapy crawl.

Resumption: the crawl's journal and downloaded-image store live in the stage's scratch folder,
which survives a failed attempt, so ``--resume`` continues the crawl instead of starting over
and never downloads an image twice. For the demo source the site is generated into scratch
too and served on the same port as before when it is free, so the journal's URLs stay valid.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from datatools.provenance import crawl_items, folder_licence
from datatools.readers import read_dataset
from lora_factory.catalog import (
    CRAWL_CONFIG,
    CRAWL_IMAGES,
    CRAWL_ITEMS,
    CRAWL_PAGES,
    CRAWL_REJECTED,
    CRAWL_STATS,
)
from lora_factory.config import FactoryConfig
from lora_factory.context import RunRef, Stage, get_logger, run_stage
from lora_factory.errors import StageError
from lora_factory.home import home_of
from lora_factory.names import mlflow_key, topic_key
from lora_factory.secrets import redact
from spiders.crawl import run_crawl
from spiders.sources.demo_site import DemoSite, generate_demo_site, serve_site
from spiders.sources.select import API_SOURCES, api_images, expand_seeds
from spiders.sources.url_list import url_list_images
from spiders.workers import run_workers

from ._prefect import stage_task

STAGE = "crawl"
DEMO_PORT_FILE = "demo_port"
PARAM_MAX_CHARS = 6000  # MLflow's limit on a param value
SEEDS_ARTIFACT = "seed_urls.json"


def demo_seed_urls(site: DemoSite, base_url: str, topics: list[str]) -> dict[str, list[str]]:
    """Each topic's first demo page; a topic the demo site has no pages for starts at its index."""
    known = {t.lower(): urls for t, urls in site.topic_urls(base_url).items()}
    index = f"{base_url.rstrip('/')}{site.start_path}"
    return {t: known.get(t.lower(), [index]) for t in topics}


@contextmanager
def seed_urls(cfg: FactoryConfig, topics: list[str], scratch: Path) -> Iterator[dict[str, list[str]]]:
    """Seed URLs per topic; for the demo source, generate and serve the site while crawling.

    ``seeds``: sitemap seeds are expanded into their pages. API sources (``wikimedia``,
    ``openverse``) have no seed pages: their images come from ``api_images``.
    """
    if cfg.crawl.source == "seeds":
        yield expand_seeds(cfg.crawl, topics)
        return
    if cfg.crawl.source in (*API_SOURCES, "urls"):
        yield {t: [] for t in topics}
        return
    site = generate_demo_site(scratch / "demo-site", seed=cfg.crawl.demo_seed)
    unknown = [t for t in topics if t.lower() not in {s.lower() for s in site.topics}]
    if unknown:
        get_logger().warning(
            "crawl: the demo site has no pages about %s (it has %s); crawling its index for them",
            unknown, ", ".join(site.topics),
        )
    port_file = scratch / DEMO_PORT_FILE
    port = int(port_file.read_text()) if port_file.exists() else 0
    with serve_site(site.root, port=port) as base_url:
        port_file.write_text(base_url.rsplit(":", 1)[1])
        yield demo_seed_urls(site, base_url, topics)


def import_dataset(st: Stage, topics: list[str]) -> dict[str, Any]:
    """``crawl.source: dataset``: the folder's images as crawl items with their provenance
    (``datatools.provenance``), written as a crawl writes them; nothing is fetched."""
    cfg = st.config.crawl
    ds = read_dataset(Path(cfg.dataset or ""), st.scratch / "unzipped")
    topic = topics[0] if topics else ""
    items, rejected = crawl_items(ds, st.out, CRAWL_IMAGES.path, topic, folder_licence(ds.root, cfg.dataset_license))
    st.write(CRAWL_ITEMS, items)
    st.output_path(CRAWL_IMAGES).mkdir(parents=True, exist_ok=True)
    st.write(CRAWL_PAGES, [])
    st.write(CRAWL_REJECTED, rejected)
    stats = {"source": "dataset", "dataset": cfg.dataset, "layout": ds.layout, "images_kept": len(items),
             "rejections": dict(Counter(r["reason"] for r in rejected)), "finish_reason": "dataset read"}
    st.write(CRAWL_STATS, stats)
    st.write(CRAWL_CONFIG, redact(cfg.model_dump(mode="json")))
    if not items:
        raise StageError(f"dataset {cfg.dataset} has no decodable images: run `lora-factory inspect` on it")
    st.log.info("crawl: %d images from dataset %s (%s layout)", len(items), cfg.dataset, ds.layout)
    return stats


@stage_task(STAGE)
def crawl_task(ref: RunRef) -> dict[str, Any]:
    with run_stage(ref, STAGE) as st:
        cfg = st.config
        st.log_params(crawl_params(cfg))
        if cfg.crawl.source == "dataset":
            stats = import_dataset(st, ref.topics)
            st.log_metrics(crawl_metrics(stats))
            return stats
        with seed_urls(cfg, ref.topics, st.scratch) as urls:
            images = (
                api_images(cfg.crawl, ref.topics) if cfg.crawl.source in API_SOURCES
                else url_list_images(cfg.crawl, ref.topics) if cfg.crawl.source == "urls" else None
            )
            seeds = seed_record(urls, images)
            st.tracker.log_dict(st.mlflow_run_id, seeds, SEEDS_ARTIFACT)
            st.log_params(seed_params(seeds))
            common = {"on_progress": st.log.info, "state_dir": st.scratch / "state",
                      "models_dir": home_of(cfg).models, "topics_to_images": images}
            if cfg.crawl.redis_url:  # distributed: any number of workers, one included
                stats = run_workers(urls, st.out, cfg.crawl, cfg.crawl.workers, ref.run_id, **common)
            else:
                stats = run_crawl(urls, st.out, cfg.crawl, **common)
        st.log_metrics(crawl_metrics(stats))
        st.log_artifact(st.output_path(CRAWL_STATS))
    return stats


def crawl_params(cfg: FactoryConfig) -> dict[str, Any]:
    """The crawl config as MLflow params: credentials in URL settings masked, seeds left out
    (they are keyed by topic and go to ``seed_urls.json``)."""
    return {**redact(cfg.crawl.model_dump(mode="json", exclude={"seeds"})),
            "num_seed_topics": len(cfg.crawl.seeds)}


def seed_record(
    urls: dict[str, list[str]], images: dict[str, list[dict[str, Any]]] | None
) -> dict[str, Any]:
    """What the crawl starts from, per topic (topics verbatim: this is data), credentials masked."""
    record: dict[str, Any] = {"seed_urls": redact(urls)}
    if images is not None:
        record["api_candidates"] = {t: len(v) for t, v in images.items()}
    return record


def seed_params(seeds: dict[str, Any]) -> dict[str, str]:
    """``seed_urls`` / ``api_candidates`` as params keyed by ``topic_key`` (a topic is any text);
    a value beyond MLflow's limit points to the artifact instead."""
    out: dict[str, str] = {}
    for name, per_topic in seeds.items():
        value = json.dumps({topic_key(t): v for t, v in per_topic.items()})
        if len(value) > PARAM_MAX_CHARS:
            value = f"{len(per_topic)} topics: see {SEEDS_ARTIFACT}"
        out[name] = value
    return out


def crawl_metrics(stats: dict[str, Any]) -> dict[str, float]:
    """The crawl stats as MLflow metrics (``rejections.too_small``, ``images_per_topic.<topic
    key>`` ...); each worker's own stats stay in crawl_stats.json."""
    flat = {k: v for k, v in stats.items() if k not in ("images_per_topic", "workers")}
    per_topic = {topic_key(t): n for t, n in (stats.get("images_per_topic") or {}).items()}
    return {mlflow_key(k): v for k, v in _numeric({**flat, "images_per_topic": per_topic}).items()}


def _numeric(stats: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Flatten nested stats to ``a.b`` keys (booleans and text left out)."""
    out: dict[str, float] = {}
    for k, v in stats.items():
        if isinstance(v, bool):
            continue
        if isinstance(v, (int, float)):
            out[f"{prefix}{k}"] = float(v)
        elif isinstance(v, dict):
            out.update(_numeric(v, f"{prefix}{k}."))
    return out
