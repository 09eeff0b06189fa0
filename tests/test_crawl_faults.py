"""The crawl against a hostile loopback site: it finishes, records every case with its reason,
fetches nothing it must not, and writes nothing outside the run directory."""

from __future__ import annotations

import io
import os
import re
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

import pandas as pd
import pytest
from parsel import Selector
from PIL import Image

from lora_factory.config import CrawlConfig
from lora_factory.manifest import read_items
from spiders.crawl import REPO_ROOT, run_crawl
from spiders.images import ImageRejected, inspect_image, sniff
from spiders.quality import page_quality
from spiders.sources.fault_site import (
    ENGLISH,
    EXPECTED_IMAGES,
    EXPECTED_PAGES,
    EXPECTED_REFUSED_LINKS,
    GERMAN,
    REFUSED_IMAGES,
    UNFETCHED_IMAGES,
    bomb_png,
    serve_fault_site,
)
from spiders.topic_spider import robots_directives

MAX_IMAGE_BYTES = 2 * 1024 * 1024


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def faults(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("faults")
    run_dir = root / "runs" / "r1"
    repo_before = set(os.listdir(REPO_ROOT))
    config = CrawlConfig(
        allow_loopback=True,  # loopback only: 10.0.0.1 and 192.168.x stay refused
        download_timeout_s=1.5,
        max_image_bytes=MAX_IMAGE_BYTES,
        warn_image_bytes=MAX_IMAGE_BYTES // 2,
        min_image_side=48,
        autothrottle=False,
        timeout_s=60,
    )
    with serve_fault_site() as site:
        stats = run_crawl(
            {"lighthouse": [site.start_url]}, run_dir / "crawl", config,
            state_dir=run_dir / ".scratch" / "crawl",
        )
        hits = Counter(site.hits)
    return {
        "root": root, "run_dir": run_dir, "out": run_dir / "crawl", "stats": stats, "hits": hits,
        "base": site.base_url, "repo_before": repo_before,
        "items": read_items(run_dir / "crawl" / "items.parquet"),
        "pages": pd.read_parquet(run_dir / "crawl" / "pages.parquet"),
        "rejected": pd.read_parquet(run_dir / "crawl" / "rejected.parquet"),
    }


def _path(url: str) -> str:
    return urlsplit(url).path


def _key(faults: dict, url: str) -> str:
    """The fault site's own URLs by path, every other URL (file:, IPv6 hosts ...) in full."""
    return url.removeprefix(faults["base"])


def test_every_image_case_is_kept_or_rejected_with_its_reason(faults) -> None:
    rejected = {_key(faults, u): r for u, r in zip(faults["rejected"]["url"], faults["rejected"]["reason"], strict=True)}
    kept = {_key(faults, it["image_url"]) for it in faults["items"]}
    expected_rejections = {p: r for p, r in EXPECTED_IMAGES.items() if r != "item"}
    assert rejected == expected_rejections
    assert kept == {p for p, r in EXPECTED_IMAGES.items() if r == "item"}
    stats = faults["stats"]
    assert stats["rejections"] == dict(sorted(Counter(expected_rejections.values()).items()))
    assert stats["rejections"]["noai"] == 4 and stats["rejections"]["too_large"] == 2
    assert stats["images"] == len(kept) == 7
    assert stats["finish_reason"] == "finished"


def test_every_page_case_is_recorded_with_its_reason(faults) -> None:
    pages = faults["pages"]
    reasons = pages["reason"].astype(object).where(pages["reason"].notna(), None)
    got = {_key(faults, u): (d, r) for u, d, r in zip(pages["url"], pages["decision"], reasons, strict=True)}
    expected = {**EXPECTED_PAGES, **EXPECTED_REFUSED_LINKS}
    assert got == expected
    not_parsed = Counter(r for d, r in expected.values() if d != "parsed")
    assert faults["stats"]["pages_not_parsed"] == dict(sorted(not_parsed.items()))
    german = pages[pages["url"].str.endswith("/german.html")].iloc[0]
    assert german["language"] == "de"
    assert faults["stats"]["pages_noai"] == 2


def test_what_must_not_be_fetched_is_not(faults) -> None:
    hits, stats = faults["hits"], faults["stats"]
    # opted-out and rejected pages' images, robots-disallowed paths: never requested
    for path in (*UNFETCHED_IMAGES, "/img/noai-page-1.png", "/img/noai-page-2.png",
                 "/img/noai-meta.png", "/private/secret.png", "/private/page.html"):
        assert hits[path] == 0, path
    # the 100 MB files were cut off: far less than one of them crossed the wire in total
    assert stats["bytes"] < 3 * MAX_IMAGE_BYTES
    # the private-address redirects were refused, not attempted: a connection to 10.0.0.1 would
    # have ended in a timeout (download_timeout_s=1.5) or a connection error instead
    rejected = faults["rejected"].set_index("url")
    assert "10.0.0.1" in rejected.loc[faults["base"] + "/img/to-private.png", "detail"]
    assert "timeout" not in rejected.loc[faults["base"] + "/img/to-private.png", "detail"]


def test_the_guard_refuses_other_schemes_and_addresses_before_any_request(faults) -> None:
    """file:, ftp:, data:, IPv6 forms of private IPv4 addresses and a host without DNS: each is
    recorded with its reason, and none became a request (the guard's refusal, not a failed
    download: no timeout, no connection error, nothing served under those paths)."""
    rejected = faults["rejected"].set_index("url")
    for url, reason in REFUSED_IMAGES.items():
        assert rejected.loc[url, "reason"] == reason, url
        assert "refused" in rejected.loc[url, "detail"] or "never fetched" in rejected.loc[url, "detail"]
        assert faults["hits"][urlsplit(url).path] == 0, url
    assert "169.254.169.254" in rejected.loc["http://[2002:a9fe:a9fe::1]/img/6to4.png", "detail"]
    assert "DNS lookup" in rejected.loc["http://no-such-host.invalid/img/no-dns.png", "detail"]
    pages = faults["pages"].set_index("url")
    for url in EXPECTED_REFUSED_LINKS:
        assert pd.isna(pages.loc[url, "status"]) and "never fetched" in pages.loc[url, "detail"]
    assert faults["hits"]["/etc/hostname"] == faults["hits"]["/pub/index.html"] == 0
    assert "file:///etc/passwd" in pages.loc[faults["base"] + "/to-file.html", "detail"]
    assert "169.254.169.254" in pages.loc[faults["base"] + "/to-metadata.html", "detail"]
    stats = faults["stats"]
    assert stats["rejections"]["unsupported_scheme"] == 3 and stats["rejections"]["dns_error"] == 1
    assert stats["pages_not_parsed"]["unsupported_scheme"] == len(EXPECTED_REFUSED_LINKS) + 1


def test_kept_images_are_canonical_and_named_by_content(faults) -> None:
    out = faults["out"]
    for it in faults["items"]:
        assert re.fullmatch(r"images/[0-9a-f]{64}\.(jpg|png)", it["image_path"])
        data = (out / it["image_path"]).read_bytes()
        with Image.open(io.BytesIO(data)) as img:
            assert img.format in ("JPEG", "PNG") and img.size == (it["width"], it["height"])
        assert it["page_url"] and it["image_url"] and it["license"]  # provenance, "unknown" ok
    by_path = {_path(it["image_url"]): it for it in faults["items"]}
    assert by_path["/img/good-3.gif"]["mime_type"] == "image/png"
    assert by_path["/img/good-4.webp"]["mime_type"] == "image/png"
    assert by_path["/img/good-2.jpg"]["mime_type"] == "image/jpeg"


def test_nothing_is_written_outside_the_run_directory(faults) -> None:
    run_dir = faults["run_dir"]
    outside = [p for p in _files(faults["root"]) if run_dir not in p.parents]
    assert outside == []
    assert set(os.listdir(REPO_ROOT)) == faults["repo_before"]
    # image files carry only content hashes, whatever the URL looked like
    names = [p.name for p in _files(run_dir) if p.suffix in (".jpg", ".png")]
    assert names and all(re.fullmatch(r"[0-9a-f]{64}\.(jpg|png)", n) for n in names)


# -- pure helpers ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (["noai"], {"noai"}),
        (["noindex, NoImageAI"], {"noindex", "noimageai"}),
        (["otherbot: noai"], set()),
        (["lorafactorybot: noai"], {"noai"}),
        (["*: noimageai"], {"noimageai"}),
        (["max-image-preview:large"], {"max-image-preview:large"}),
    ],
)
def test_robots_directives(values: list[str], expected: set[str]) -> None:
    assert robots_directives(values, "lorafactorybot") == expected


def _encoded(fmt: str, mode: str = "RGB", size: tuple[int, int] = (40, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, "red" if mode != "CMYK" else (0, 255, 255, 0)).save(buf, fmt)
    return buf.getvalue()


def test_inspect_image_checks_type_magic_pixels_and_converts() -> None:
    with pytest.raises(ImageRejected, match="bad_magic"):
        inspect_image(b"<!DOCTYPE html><html></html>", "image/jpeg")
    with pytest.raises(ImageRejected, match="not_image"):
        inspect_image(_encoded("PNG"), "text/html")
    with pytest.raises(ImageRejected, match="decompression_bomb"):
        inspect_image(bomb_png(4000), "image/png")
    with pytest.raises(ImageRejected, match="too_many_pixels"):
        inspect_image(_encoded("PNG"), "image/png", max_pixels=100)
    png = _encoded("PNG")
    assert inspect_image(png, None).data == png  # PNG and RGB JPEG are kept byte for byte
    for fmt, mode in (("GIF", "RGB"), ("WEBP", "RGB"), ("BMP", "RGB"), ("JPEG", "CMYK")):
        info = inspect_image(_encoded(fmt, mode), "application/octet-stream")
        assert info.converted and info.mime_type == "image/png" and sniff(info.data) == "PNG"
        assert (info.width, info.height) == (40, 30)


def test_page_quality_reasons() -> None:
    def judge(body: str) -> str | None:
        html = f"<html><body>{body}</body></html>"
        return page_quality(Selector(text=html), ["en"], 3.0, 0.6).reason

    assert judge(f"<p>{ENGLISH}</p>") is None
    assert judge(f"<p>{GERMAN}</p>") == "language"
    assert judge("<p>" + "buy cheap pictures " * 40 + "</p>") == "low_entropy"
    links = " ".join(f'<a href="/{i}">cheap watches casino deal {i}</a>' for i in range(30))
    assert judge(f"<p>Welcome.</p>{links}") == "ad_farm"
    assert judge("<p>Contact: <a href='/x'>us</a></p>") is None  # too little text to judge
