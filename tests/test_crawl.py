"""The crawl stage against the demo site, over real HTTP on 127.0.0.1, plus its pure helpers."""

from __future__ import annotations

import hashlib
import io
import json
import re
import socket
import threading
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

import pandas as pd
import pytest
from parsel import Selector
from PIL import Image

from lora_factory.config import CrawlConfig
from lora_factory.errors import StageError
from lora_factory.manifest import ITEM_SCHEMA, read_items
from spiders.crawl import run_crawl
from spiders.extract import extract_page, licence_from_text, licence_from_url
from spiders.guard import is_public
from spiders.images import ImageRejected, inspect_image
from spiders.record import JOURNAL_NAME, CrawlRecord
from spiders.sources.demo_site import MISSING_IMAGE, generate_demo_site, serve_site

MIN_SIDE = 48  # above the demo's tiny images (24x24, 40x30), below everything else
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".webp")


def _config(**overrides) -> CrawlConfig:
    """No AutoThrottle: its delay follows the measured latency, so on a loaded machine a crawl
    slows down until it meets its wall-clock bound; the bound is a backstop, not a test."""
    settings = {
        "allow_loopback": True,
        "min_image_side": MIN_SIDE,
        "max_depth": 4,
        "timeout_s": 600.0,
        "autothrottle": False,
    }
    return CrawlConfig(**{**settings, **overrides})


class HeldRequests(Counter):
    """A site's hit counter (``serve_site(hits=...)``) that holds requests: every request for
    which ``hold(path)`` is true waits until ``release`` is set (at most ``max_wait_s``).

    Why: a test that needs a crawl to be unfinished at some moment must not depend on how fast
    the machine is; held requests cannot complete, however fast the crawler runs.
    """

    def __init__(self, max_wait_s: float = 120.0) -> None:
        super().__init__()
        self.release = threading.Event()
        self.max_wait_s = max_wait_s
        self.lock = threading.Lock()

    def hold(self, path: str) -> bool:
        return False

    def __setitem__(self, key: str, value: int) -> None:
        with self.lock:
            held = self.hold(key)
        if held:
            self.release.wait(self.max_wait_s)
        with self.lock:
            super().__setitem__(key, value)


class HoldAfterImages(HeldRequests):
    """Serves the first ``images`` image requests, then holds every request; ``closed`` is set
    when the gate closes."""

    def __init__(self, images: int) -> None:
        super().__init__()
        self.images_left = images
        self.closed = threading.Event()

    def hold(self, path: str) -> bool:
        if self.closed.is_set():
            return True
        if path.endswith(IMAGE_SUFFIXES):
            self.images_left -= 1
            if self.images_left == 0:
                self.closed.set()
        return False


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory):
    site = generate_demo_site(tmp_path_factory.mktemp("site"), seed=0)
    with serve_site(site.root) as base_url:
        yield site, base_url


@pytest.fixture(scope="module")
def crawled(demo, tmp_path_factory: pytest.TempPathFactory):
    site, base = demo
    out = tmp_path_factory.mktemp("crawl")
    lines: list[str] = []
    stats = run_crawl(site.topic_urls(base), out, _config(), on_progress=lines.append)
    return {
        "site": site,
        "base": base,
        "out": out,
        "stats": stats,
        "lines": lines,
        "items": read_items(out / "items.parquet"),
        "pages": pd.read_parquet(out / "pages.parquet"),
        "rejected": pd.read_parquet(out / "rejected.parquet"),
    }


def _path(url: str) -> str:
    return urlsplit(url).path


# -- the demo crawl -------------------------------------------------------------------------


def test_crawl_collects_every_reachable_image_once(crawled) -> None:
    truth, base = crawled["site"].ground_truth, crawled["base"]
    expected = {
        base + p
        for p, e in truth.items()
        if e["kind"] != "corrupt" and min(e["width"], e["height"]) >= MIN_SIDE
    }
    seen = [u for it in crawled["items"] for u in [it["image_url"], *it["other_urls"]]]
    assert sorted(seen) == sorted(expected)
    assert (
        crawled["stats"]["images"]
        == len(crawled["items"])
        == len({it["item_id"] for it in crawled["items"]})
    )
    for it in crawled["items"]:
        stored = crawled["out"] / it["image_path"]
        data = stored.read_bytes()
        assert (
            it["image_path"]
            == f"images/{it['item_id']}.{'jpg' if it['mime_type'] == 'image/jpeg' else 'png'}"
        )
        assert hashlib.sha256(data).hexdigest() == it["item_id"] and len(data) == it["num_bytes"]
        assert data == (crawled["site"].root / _path(it["image_url"]).lstrip("/")).read_bytes()
    assert len(list((crawled["out"] / "images").iterdir())) == len(crawled["items"])


def test_items_carry_provenance(crawled) -> None:
    truth = crawled["site"].ground_truth
    assert pd.read_parquet(crawled["out"] / "items.parquet").columns.tolist() == ITEM_SCHEMA.names
    for it in crawled["items"]:
        entry = truth[_path(it["image_url"])]
        assert it["page_url"] == crawled["base"] + entry["page"]
        assert (
            it["page_title"]
            and it["crawl_time"] is not None
            and it["topic"] in crawled["site"].topics
        )
        assert it["license"] == entry["license"]
        assert it["author"] == entry["author"]
        assert it["alt_text"] == entry["alt"]
        assert (it["width"], it["height"]) == (entry["width"], entry["height"])
        assert it["robots"] == "allowed"
        if it["license"].startswith("CC-"):
            assert it["license_url"].startswith("https://creativecommons.org/licenses/")
    with_caption = [it for it in crawled["items"] if it["figure_caption"]]
    assert with_caption and all(it["surrounding_text"] for it in with_caption)
    assert any(it["title_text"] for it in crawled["items"])


def test_byte_copies_merge_and_pixel_copies_stay_separate(crawled) -> None:
    truth, base, items = crawled["site"].ground_truth, crawled["base"], crawled["items"]
    item_of = {u: it["item_id"] for it in items for u in [it["image_url"], *it["other_urls"]]}
    byte_dups = [p for p, e in truth.items() if e["kind"] == "byte_dup"]
    assert byte_dups
    for path in byte_dups:
        holders = [
            it
            for it in items
            if {base + path, base + truth[path]["dup_of"]} <= {it["image_url"], *it["other_urls"]}
        ]
        assert len(holders) == 1 and len(holders[0]["other_urls"]) == 1
    assert crawled["stats"]["byte_duplicates_merged"] == len(byte_dups)
    for path, entry in truth.items():
        if (
            entry["kind"] == "exact_dup"
        ):  # same pixels, other bytes: curation's job, not the crawl's
            assert item_of[base + path] != item_of[base + entry["dup_of"]]


def test_rejections_and_pages_are_recorded(crawled) -> None:
    truth, base, stats = crawled["site"].ground_truth, crawled["base"], crawled["stats"]
    reasons = dict(zip(crawled["rejected"]["url"], crawled["rejected"]["reason"], strict=True))
    tiny = [p for p, e in truth.items() if e["kind"] == "tiny"]
    assert all(reasons[base + p] == "too_small" for p in tiny)
    assert all(
        reasons[base + p] == "undecodable" for p, e in truth.items() if e["kind"] == "corrupt"
    )
    assert reasons[base + MISSING_IMAGE] == "http_404"
    assert stats["rejections"] == {"too_small": len(tiny), "undecodable": 1, "http_404": 1}
    pages = crawled["pages"]
    assert sorted(_path(u) for u in pages["url"]) == sorted(crawled["site"].pages)
    assert set(pages["decision"]) == {"parsed"} and set(pages["status"]) == {200}
    assert stats["pages"] == len(pages) and stats["finish_reason"] == "finished"
    assert stats["duration_s"] > 0 and stats["bytes"] >= stats["image_bytes"] > 0
    assert crawled["lines"] and all(line.startswith("crawl: ") for line in crawled["lines"])
    assert crawled["lines"][-1].startswith("crawl: done")
    assert (crawled["out"] / "crawl_stats.json").exists()


def test_max_pages_stops_the_crawl_and_says_why(demo, tmp_path: Path) -> None:
    site, base = demo
    stats = run_crawl(site.topic_urls(base), tmp_path, _config(max_pages=4, autothrottle=False))
    pages = pd.read_parquet(tmp_path / "pages.parquet")
    assert len(pages) == 4 and stats["pages"] == 4
    assert stats["finish_reason"] == "max_pages"
    page_urls = set(pages["url"])
    assert all(it["page_url"] in page_urls for it in read_items(tmp_path / "items.parquet"))


def test_max_images_stops_the_crawl_and_says_why(demo, tmp_path: Path) -> None:
    site, base = demo
    stats = run_crawl(site.topic_urls(base), tmp_path, _config(max_images=5, autothrottle=False))
    assert stats["images"] == 5 and len(read_items(tmp_path / "items.parquet")) == 5
    assert stats["finish_reason"] == "max_images"


def test_max_depth_stops_following_links_and_says_why(demo, tmp_path: Path) -> None:
    site, base = demo
    stats = run_crawl(site.topic_urls(base), tmp_path, _config(max_depth=1, autothrottle=False))
    pages = pd.read_parquet(tmp_path / "pages.parquet")
    assert pages["depth"].max() == 1 and len(pages) < len(site.pages)
    assert stats["finish_reason"] == "max_depth"


def test_max_images_per_topic_bounds_each_topic(demo, tmp_path: Path) -> None:
    site, base = demo
    stats = run_crawl(
        site.topic_urls(base), tmp_path, _config(max_images_per_topic=3, autothrottle=False)
    )
    per_topic = Counter(it["topic"] for it in read_items(tmp_path / "items.parquet"))
    assert per_topic == {t: 3 for t in site.topics}
    assert stats["images_per_topic"] == dict(sorted(per_topic.items()))
    assert stats["finish_reason"] == "max_images_per_topic"


def test_wall_clock_timeout_stops_the_crawl_cleanly(tmp_path: Path) -> None:
    """Every page but the seed is held by the server: whatever the machine's speed, the crawl
    cannot finish before its wall clock runs out, and the seed's images are done by then."""
    site = generate_demo_site(tmp_path / "site", seed=0)
    seed = "/lighthouse/page-1.html"

    class HoldOtherPages(HeldRequests):
        def hold(self, path: str) -> bool:
            return path.endswith(".html") and path != seed

    hits = HoldOtherPages()
    # Held requests time out with the crawl, so the graceful shutdown does not wait longer.
    config = _config(timeout_s=10.0, download_timeout_s=10.0)
    try:
        with serve_site(site.root, hits=hits) as base:
            stats = run_crawl({"lighthouse": [base + seed]}, tmp_path / "out", config)
    finally:
        hits.release.set()
    on_seed = [e for e in site.ground_truth.values()
               if e["page"] == seed and e["kind"] != "corrupt" and min(e["width"], e["height"]) >= MIN_SIDE]
    assert stats["finish_reason"] == "timeout"
    assert stats["images"] == len(on_seed) > 0 and stats["pages"] == 1
    assert len(read_items(tmp_path / "out" / "items.parquet")) == stats["images"]


class _Interrupt(Exception):
    """Raised from the progress callback to stop a crawl part-way, as a crash would."""


def test_interrupted_crawl_resumes_and_never_fetches_an_image_twice(tmp_path: Path) -> None:
    """The server serves 20 images, then holds every request until the first attempt is
    interrupted (so it is interrupted part-way, however fast the machine is); the second attempt
    does the rest, fetches nothing twice, and its stats count both attempts."""
    site = generate_demo_site(tmp_path / "site", seed=0)
    hits = HoldAfterImages(20)
    state = tmp_path / "scratch"
    config = _config(download_delay_s=0.02, concurrent_requests_per_domain=2)

    def interrupt_at_the_gate(line: str) -> None:
        if hits.closed.is_set() and re.match(r"crawl: \d+ pages, \d+ images", line):
            hits.release.set()  # let the requests in flight finish: a graceful stop
            raise _Interrupt

    try:
        with serve_site(site.root, hits=hits) as base:
            with pytest.raises(_Interrupt):
                run_crawl(site.topic_urls(base), tmp_path / "a", config,
                          on_progress=interrupt_at_the_gate, state_dir=state)
            first = json.loads((tmp_path / "a" / "crawl_stats.json").read_text())
            first_hits = Counter(hits)
            stats = run_crawl(site.topic_urls(base), tmp_path / "b", config, state_dir=state)
    finally:
        hits.release.set()

    assert first["finish_reason"] == "interrupted" and 0 < first["images"] < stats["images"]
    assert stats["resumed"] and stats["finish_reason"] == "finished"
    second_hits = hits - first_hits
    assert second_hits, "the second run did the rest of the work"
    twice = {p: n for p, n in hits.items() if n > 1 and p != "/robots.txt"}
    assert twice == {}, "no page or image is fetched twice across both runs"
    assert not any(first_hits[p] for p in second_hits if p != "/robots.txt")
    # The stats are the run's: both attempts' requests and bytes, not the last one's.
    assert stats["sessions"] == 2 and stats["requests"] == sum(hits.values())
    assert stats["bytes"] > first["bytes"] > 0
    expected = {
        base + p for p, e in site.ground_truth.items()
        if e["kind"] != "corrupt" and min(e["width"], e["height"]) >= MIN_SIDE
    }
    items = read_items(tmp_path / "b" / "items.parquet")
    assert {u for it in items for u in [it["image_url"], *it["other_urls"]]} == expected
    assert all((tmp_path / "b" / it["image_path"]).is_file() for it in items)
    rejected = pd.read_parquet(tmp_path / "b" / "rejected.parquet")
    assert Counter(rejected["reason"]) == {"too_small": sum(
        1 for e in site.ground_truth.values() if e["kind"] == "tiny"), "undecodable": 1, "http_404": 1}


def _hub_site(root: Path, pages: int) -> None:
    """A gallery index that is nothing but links (an ``ad_farm`` by its text), each to a page
    with one picture."""
    links = "".join(
        f'<li><a href="/pictures/{i}.html">Gallery picture number {i} of the lighthouse</a></li>'
        for i in range(pages)
    )
    (root / "pictures").mkdir(parents=True)
    (root / "index.html").write_text(
        f"<html lang='en'><head><title>Gallery</title></head><body><h1>Gallery</h1>"
        f"<ul>{links}</ul></body></html>", encoding="utf-8")
    for i in range(pages):
        Image.new("RGB", (64, 64), (i * 5 % 256, 200 - i, 90)).save(root / "pictures" / f"{i}.png")
        (root / "pictures" / f"{i}.html").write_text(
            f"<html lang='en'><head><title>Picture {i}</title></head><body><h1>Picture {i}</h1>"
            f"<p>The old lighthouse on the headland, photographed from the harbour wall.</p>"
            f"<img src='/pictures/{i}.png' alt='lighthouse {i}'></body></html>", encoding="utf-8")


def test_a_hub_page_rejected_for_quality_still_leads_to_its_pictures(tmp_path: Path) -> None:
    """Seeded at a gallery index of 24 links: the index is not mined (ad_farm) but its links
    are followed, within the page bound."""
    _hub_site(tmp_path / "site", 24)
    with serve_site(tmp_path / "site") as base:
        stats = run_crawl({"lighthouse": [base + "/index.html"]}, tmp_path / "all", _config())
        bounded = run_crawl({"lighthouse": [base + "/index.html"]}, tmp_path / "bounded",
                            _config(max_pages=7))
    pages = pd.read_parquet(tmp_path / "all" / "pages.parquet").set_index("url")
    assert pages.loc[base + "/index.html", "reason"] == "ad_farm"
    assert pages.loc[base + "/index.html", "n_images"] == 0
    assert stats["pages"] == 24 and stats["images"] == 24
    assert stats["pages_not_parsed"] == {"ad_farm": 1}
    assert bounded["pages_requested"] == 7 and bounded["images"] == 6
    assert bounded["finish_reason"] == "max_pages"


def test_private_addresses_are_refused_by_default(demo, tmp_path: Path) -> None:
    site, base = demo
    with pytest.raises(StageError, match="allow_private_addresses=true") as err:
        run_crawl(site.topic_urls(base), tmp_path, _config(allow_loopback=False))
    assert "\n" not in str(err.value)
    pages = pd.read_parquet(tmp_path / "pages.parquet")
    assert set(pages["reason"]) == {"private_address"}


def test_unreachable_seed_fails_fast_with_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again when the block ends: nothing listens there
    url = f"http://127.0.0.1:{port}/index.html"
    with pytest.raises(StageError, match="the crawl found no images at .*connection_refused") as err:
        run_crawl({"lighthouse": [url]}, tmp_path, _config())
    assert "\n" not in str(err.value)


def test_bad_seed_urls_are_refused_before_crawling(tmp_path: Path) -> None:
    with pytest.raises(StageError, match="no seed URLs"):
        run_crawl({"lighthouse": []}, tmp_path, _config())
    with pytest.raises(StageError, match="not an http"):
        run_crawl({"lighthouse": ["ftp://example.org/x"]}, tmp_path, _config())


# -- pure helpers ---------------------------------------------------------------------------


def _page_row(url: str) -> dict:
    return {"url": url, "status": 200, "depth": 0, "topic": "t", "n_images": 0, "decision": "parsed"}


def test_a_torn_journal_line_does_not_swallow_the_next_event(tmp_path: Path) -> None:
    """A kill can leave the journal's last line without its newline: the next attempt must not
    append its first event to that line (the event would be lost at the resume after)."""
    def attempt() -> tuple[CrawlRecord, object]:
        record = CrawlRecord(tmp_path / "out", state_dir=tmp_path / "state")
        return record, record.open_journal()

    first, _ = attempt()
    first.add_page(_page_row("http://s.test/a"), "http://s.test/a")
    first.close()
    journal = tmp_path / "state" / JOURNAL_NAME
    with open(journal, "a", encoding="utf-8") as f:
        f.write('{"e": "page", "key": "http://s.test/b", "row": {"url": "http://s.te')  # killed
    second, _ = attempt()
    second.add_page(_page_row("http://s.test/c"), "http://s.test/c")
    second.close()
    third, state = attempt()
    assert state.pages_done == {"http://s.test/a", "http://s.test/c"}
    assert [p["url"] for p in third.pages] == ["http://s.test/a", "http://s.test/c"]
    # A last event complete but for its newline is kept, not cut.
    third.close()
    with open(journal, "a", encoding="utf-8") as f:
        f.write(json.dumps({"e": "page", "key": "http://s.test/d", "row": _page_row("http://s.test/d")}))
    _, state = attempt()
    assert "http://s.test/d" in state.pages_done
    assert journal.read_text(encoding="utf-8").endswith("\n")

PAGE = """<html><head><title> A  page </title><meta name="author" content="Ana Ruiz"></head><body>
<p>Before the figure.</p>
<figure><img src="/a.png" alt=" a red  lighthouse " title="Red"><figcaption>A red lighthouse.</figcaption></figure>
<p>After the figure.</p>
<p>Inline <img src="b.jpg#frag" alt=""> picture.</p>
<img src="data:image/png;base64,AAAA"><img src="/a.png">
<footer><a rel="license" href="https://creativecommons.org/licenses/by-sa/4.0/">CC BY-SA</a></footer>
</body></html>"""


def test_extract_page_reads_images_licence_and_author() -> None:
    page = extract_page(Selector(text=PAGE), "http://site.test/dir/page.html")
    assert (page.title, page.license, page.author) == ("A page", "CC-BY-SA-4.0", "Ana Ruiz")
    assert page.license_url == "https://creativecommons.org/licenses/by-sa/4.0/"
    a, b = page.images
    assert (a.url, a.alt_text, a.title_text, a.figure_caption) == (
        "http://site.test/a.png",
        "a red lighthouse",
        "Red",
        "A red lighthouse.",
    )
    assert a.surrounding_text == "Before the figure. After the figure."
    assert (b.url, b.alt_text, b.figure_caption, b.surrounding_text) == (
        "http://site.test/dir/b.jpg",
        "",
        None,
        "Inline picture.",
    )


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://creativecommons.org/licenses/by/4.0/", "CC-BY-4.0"),
        ("http://creativecommons.org/licenses/by-nc-nd/3.0/deed.en", "CC-BY-NC-ND-3.0"),
        ("https://creativecommons.org/publicdomain/zero/1.0/", "CC0-1.0"),
        ("https://example.org/terms", None),
    ],
)
def test_licence_from_url(url: str, expected: str | None) -> None:
    assert licence_from_url(url) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Licensed CC BY-SA 4.0 by the club", "CC-BY-SA-4.0"),
        ("(c) 2024 Someone. All rights reserved.", "all-rights-reserved"),
        ("Nothing here", None),
    ],
)
def test_licence_from_text(text: str, expected: str | None) -> None:
    assert licence_from_text(text) == expected


def test_inspect_image_accepts_images_and_names_what_it_rejects() -> None:
    buf = io.BytesIO()
    Image.new("RGB", (30, 20), "red").save(buf, "PNG")
    info = inspect_image(buf.getvalue(), "image/png")
    assert (info.width, info.height, info.ext, info.mime_type) == (30, 20, "png", "image/png")
    with pytest.raises(ImageRejected) as rejected:
        inspect_image(b"<html>not an image</html>", "text/html")
    assert rejected.value.reason == "not_image"
    with pytest.raises(ImageRejected) as rejected:
        inspect_image(buf.getvalue()[:40], "image/png")
    assert rejected.value.reason == "undecodable"


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("127.0.0.1", False),
        ("10.1.2.3", False),
        ("192.168.0.1", False),
        ("169.254.1.1", False),
        ("::1", False),
        ("::ffff:127.0.0.1", False),
        ("fd00::1", False),
        ("0.0.0.0", False),
        ("93.184.216.34", True),
        ("2606:2800:220:1::1", True),
    ],
)
def test_is_public(address: str, public: bool) -> None:
    assert is_public(address) is public
