"""The relevance filter with the real all-MiniLM-L6-v2: off-topic links are not followed and
off-topic pages are recorded with their reason and score."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

import pandas as pd
import pytest

from lora_factory.config import CrawlConfig
from lora_factory.manifest import read_items
from spiders.crawl import run_crawl
from spiders.sources.demo_site import generate_demo_site, serve_site


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


def test_relevance_keeps_the_crawl_on_topic(tmp_path: Path, models_dir: Path) -> None:
    site = generate_demo_site(tmp_path / "site", seed=0)
    config = CrawlConfig(
        allow_loopback=True, relevance_threshold=0.3, autothrottle=False, min_image_side=48,
        max_depth=4,
    )
    with serve_site(site.root) as base:
        # Seeded at the index (about every topic): only lighthouse pages should be mined.
        stats = run_crawl({"lighthouse": [base + "/index.html"]}, tmp_path / "crawl", config,
                          models_dir=models_dir)
    pages = pd.read_parquet(tmp_path / "crawl" / "pages.parquet")
    parsed = pages[pages["decision"] == "parsed"]
    assert pages["relevance"].notna().all()
    beyond_seed = {urlsplit(u).path.split("/")[1] for u in parsed["url"] if not u.endswith("/index.html")}
    assert beyond_seed == {"lighthouse"}
    assert sum(1 for p in site.pages if p.startswith("/lighthouse/")) == len(parsed) - 1
    off = pages[pages["reason"] == "off_topic"]
    assert len(off) == stats["pages_not_parsed"]["off_topic"] >= 1
    assert (off["relevance"] < 0.3).all() and (parsed["relevance"].iloc[1:] >= 0.3).all()
    assert stats["links_off_topic"] >= 3  # cactus, sailboat, recipes... links not followed
    items = read_items(tmp_path / "crawl" / "items.parquet")
    truth = site.ground_truth
    assert items and all(
        truth[urlsplit(it["image_url"]).path]["page"].startswith(("/lighthouse/", "/index"))
        for it in items
    )
