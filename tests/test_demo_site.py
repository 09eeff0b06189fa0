"""The demo site generator is deterministic, its ground truth is complete and true, and it serves."""

from __future__ import annotations

import io
import socket
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image, ImageFilter, ImageStat

from spiders.sources.demo_site import KINDS, MISSING_IMAGE, generate_demo_site, serve_site

IMAGE_SUFFIXES = {".png", ".jpg"}


def _files(root: Path) -> dict[str, bytes]:
    return {
        "/" + p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _pixels(path: Path) -> bytes:
    with Image.open(path) as im:
        return im.convert("RGB").tobytes()


LAPLACIAN = ImageFilter.Kernel((3, 3), [0, 1, 0, 1, -4, 1, 0, 1, 0], scale=1, offset=128)


def _sharpness(path: Path) -> float:
    """Variance of the Laplacian (the usual blur measure), ignoring the unfiltered border."""
    with Image.open(path) as im:
        edges = im.convert("L").filter(LAPLACIAN)
    return ImageStat.Stat(edges.crop((2, 2, edges.width - 2, edges.height - 2))).var[0]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory):
    return generate_demo_site(tmp_path_factory.mktemp("demo"), seed=0)


def test_same_seed_gives_identical_bytes(tmp_path: Path) -> None:
    started = time.monotonic()
    generate_demo_site(tmp_path / "a", seed=7)
    assert time.monotonic() - started < 5, "the demo site must generate in a couple of seconds"
    generate_demo_site(tmp_path / "b", seed=7)
    generate_demo_site(tmp_path / "c", seed=8)
    a, b, c = (_files(tmp_path / n) for n in "abc")
    assert a == b
    def pages(files: dict) -> set:
        return {p for p in files if p.endswith(".html")}

    def images(files: dict) -> set:
        return {data for p, data in files.items() if Path(p).suffix in IMAGE_SUFFIXES}

    assert pages(a) == pages(c)  # the same layout...
    assert len(images(a) & images(c)) <= 3  # ...with other pictures (an ad banner may repeat)


def test_ground_truth_covers_every_image_written(site) -> None:
    written = {p for p in _files(site.root) if Path(p).suffix in IMAGE_SUFFIXES}
    assert written == set(site.ground_truth)
    assert (site.root / "ground_truth.json").exists()
    counts = Counter(e["kind"] for e in site.ground_truth.values())
    assert set(counts) == set(KINDS)
    assert 60 <= len(site.ground_truth) <= 100
    assert 20 <= len(site.pages) <= 40
    assert site.start_path == "/index.html" and site.start_path in site.pages
    for topic in site.topics:
        assert (
            10
            <= sum(
                1
                for e in site.ground_truth.values()
                if e["kind"] == "clean" and e["topic"] == topic
            )
            <= 14
        )
    for path, entry in site.ground_truth.items():
        assert entry["page"] in site.pages
        page_html = (site.root / entry["page"].lstrip("/")).read_text(encoding="utf-8")
        assert f'src="{path}"' in page_html
        if entry["dup_of"]:
            assert site.ground_truth[entry["dup_of"]]["kind"] == "clean"
    assert (
        MISSING_IMAGE not in site.ground_truth
        and not (site.root / MISSING_IMAGE.lstrip("/")).exists()
    )


def test_planted_junk_is_what_ground_truth_says(site) -> None:
    root, truth = site.root, site.ground_truth
    def path_of(p: str) -> Path:
        return root / p.lstrip("/")
    by_kind: dict[str, list[str]] = {}
    for path, entry in truth.items():
        by_kind.setdefault(entry["kind"], []).append(path)

    for path in by_kind["exact_dup"]:
        original = truth[path]["dup_of"]
        assert path_of(path).read_bytes() != path_of(original).read_bytes()
        assert _pixels(path_of(path)) == _pixels(path_of(original))
    for path in by_kind["byte_dup"]:
        assert path_of(path).read_bytes() == path_of(truth[path]["dup_of"]).read_bytes()
        assert truth[path]["page"] != truth[truth[path]["dup_of"]]["page"]
    for path in by_kind["near_dup"]:
        assert _pixels(path_of(path)) != _pixels(path_of(truth[path]["dup_of"]))
    for path in by_kind["tiny"]:
        assert max(truth[path]["width"], truth[path]["height"]) <= 40
    for path in by_kind["ad"]:
        assert truth[path]["alt"] == "advertisement" and (
            truth[path]["width"],
            truth[path]["height"],
        ) in {(468, 60), (300, 250)}
    sharpest_blurry = max(_sharpness(path_of(p)) for p in by_kind["blurry"])
    assert sharpest_blurry < 0.1 * min(_sharpness(path_of(p)) for p in by_kind["clean"])
    for path in by_kind["corrupt"]:
        with pytest.raises(OSError), Image.open(path_of(path)) as im:
            im.load()
    for path in by_kind["clean"] + by_kind["off_topic"]:
        assert (
            min(truth[path]["width"], truth[path]["height"]) >= 96
            and max(truth[path]["width"], truth[path]["height"]) <= 192
        )
    assert {e["topic"] for e in truth.values() if e["kind"] in ("ad", "off_topic")} == {None}
    assert any(e["alt"] == "" for e in truth.values()), "one image has empty alt text"
    assert {e["license"] for e in truth.values()} == {
        "CC-BY-4.0",
        "CC-BY-SA-4.0",
        "all-rights-reserved",
        "unknown",
    }
    formats = Counter(Image.open(path_of(p)).format for p in by_kind["clean"])
    assert formats["PNG"] and formats["JPEG"]


def _get(url: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.headers.get("Content-Type", ""), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers.get("Content-Type", ""), b""


def test_server_serves_the_site_on_loopback(site) -> None:
    png = next(p for p in site.ground_truth if p.endswith(".png"))
    jpg = next(
        p
        for p in site.ground_truth
        if p.endswith(".jpg") and site.ground_truth[p]["kind"] == "clean"
    )
    with serve_site(site.root) as base:
        assert base.startswith("http://127.0.0.1:")
        status, ctype, body = _get(base + site.start_path)
        assert status == 200 and ctype.startswith("text/html") and b"lighthouse/page-1.html" in body
        status, ctype, body = _get(base + png)
        assert (
            status == 200
            and ctype == "image/png"
            and body == (site.root / png.lstrip("/")).read_bytes()
        )
        assert _get(base + jpg)[1] == "image/jpeg"
        Image.open(io.BytesIO(_get(base + jpg)[2])).load()
        status, _, body = _get(base + "/robots.txt")
        assert status == 200 and b"Allow: /" in body and b"Disallow" not in body
        assert _get(base + MISSING_IMAGE)[0] == 404
        port = int(base.rsplit(":", 1)[1])
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


def test_topic_urls_point_at_each_topics_first_page(site) -> None:
    urls = site.topic_urls("http://127.0.0.1:1234/")
    assert urls == {t: [f"http://127.0.0.1:1234/{t}/page-1.html"] for t in site.topics}
    assert all(f"/{t}/page-1.html" in site.pages for t in site.topics)
