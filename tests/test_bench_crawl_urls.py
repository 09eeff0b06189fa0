"""bench/crawl.py's url-list mode on a small loopback site: the factory's url-list crawl and the
plain downloader both fetch every image of the same list, and the figures are complete (the
speeds themselves are the bench's business, not a test's)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from bench.crawl import crawl_url_list, make_site, plain_download, serve


def test_the_plain_downloader_stores_every_body_of_the_list(tmp_path: Path) -> None:
    site = make_site(2, 3)
    images = {hashlib.sha256(body).hexdigest() for path, (_, body) in site.items() if path.startswith("/img/")}
    with serve(site) as base:
        files, size, seconds = plain_download([base + p for p in site if p.startswith("/img/")], str(tmp_path), 4)
    assert files == 6 and seconds > 0
    assert {p.name for p in tmp_path.iterdir()} == images
    assert size == sum(len(b) for p, (_, b) in site.items() if p.startswith("/img/"))


def test_url_list_mode_fetches_the_same_images_both_ways() -> None:
    figures = crawl_url_list(make_site(3, 2), concurrency=4, timeout_s=120.0, repeats=2)
    assert figures["urls"] == 6 and figures["images_validated"] == 6 and figures["plain_files"] == 6
    assert figures["pages"] == 0 and figures["finish_reason"] == "finished"  # no HTML page fetched
    assert figures["ratio"] > 0 and figures["plain_images_per_s"] > 0 and figures["images_validated_per_s"] > 0
    assert len(figures["ratio_per_run"]) == 2 and figures["ratio_median"] > 0
