"""``crawl.source: urls``: image URLs from a text, CSV or Parquet list, fetched directly by the
crawl's image pipeline on a loopback site (no HTML page requested), captions and licences kept."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lora_factory.config import CrawlConfig
from lora_factory.errors import ConfigError
from spiders.sources.url_list import read_url_list, url_list_images

from .fixture_api import serve_fixtures
from .test_crawl_sources import png


def test_text_csv_and_parquet_lists(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("# my list\nhttp://x/1.png\ta red fox\n\nhttp://x/2.png\n")
    assert read_url_list(tmp_path / "a.txt") == [
        {"url": "http://x/1.png", "caption": "a red fox", "license": None},
        {"url": "http://x/2.png", "caption": None, "license": None}]
    (tmp_path / "b.csv").write_text("URL,TEXT,LICENSE\nhttp://x/1.png,a  fox,CC0\n")
    assert read_url_list(tmp_path / "b.csv") == [{"url": "http://x/1.png", "caption": "a fox", "license": "CC0"}]
    pq.write_table(pa.table({"url": ["http://x/3.png"], "caption": ["a boat"], "license": ["CC-BY-4.0"]}),
                   tmp_path / "c.parquet")
    assert read_url_list(tmp_path / "c.parquet")[0]["license"] == "CC-BY-4.0"
    (tmp_path / "d.csv").write_text("link,words\nhttp://x/1.png,fox\n")
    with pytest.raises(ConfigError, match="no url column"):
        read_url_list(tmp_path / "d.csv")
    with pytest.raises(ConfigError, match="does not exist"):
        read_url_list(tmp_path / "none.txt")
    with pytest.raises(ValueError, match="urls_file"):
        CrawlConfig(source="urls")


def test_a_url_list_crawl_fetches_only_the_images_with_their_provenance(tmp_path: Path) -> None:
    from lora_factory.manifest import read_items
    from spiders.crawl import run_crawl

    colours = [(200, 80, 40), (40, 160, 90), (30, 60, 200)]
    extra = {f"/img/{i}.png": ("image/png", png(64, 48, c)) for i, c in enumerate(colours)}
    with serve_fixtures(extra) as srv:
        rows = [f"{srv.base_url}/img/{i}.png,a picture number {i},CC0" for i in range(3)]
        (tmp_path / "list.csv").write_text("url,caption,license\n" + "\n".join(rows) + "\n")
        config = CrawlConfig(source="urls", urls_file=str(tmp_path / "list.csv"), allow_loopback=True,
                             min_image_side=16, timeout_s=60.0, autothrottle=False)
        images = url_list_images(config, ["pictures"])
        stats = run_crawl({"pictures": []}, tmp_path / "crawl", config, state_dir=tmp_path / "state",
                          topics_to_images=images)
    assert stats["images"] == 3
    items = sorted(read_items(tmp_path / "crawl" / "items.parquet"), key=lambda r: r["image_url"])
    assert [r["image_url"] for r in items] == [f"{srv.base_url}/img/{i}.png" for i in range(3)]
    assert [r["alt_text"] for r in items] == [f"a picture number {i}" for i in range(3)]
    assert {r["license"] for r in items} == {"CC0"} and {r["topic"] for r in items} == {"pictures"}
    assert all(p.startswith(("/img/", "/robots.txt")) for p in srv.requests)  # no HTML page fetched
