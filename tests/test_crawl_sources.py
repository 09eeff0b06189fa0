"""Crawl sources: seed files, sitemaps, Wikimedia Commons and Openverse adapters, against
recorded API responses served on 127.0.0.1 (``tests/fixture_api.py``)."""

from __future__ import annotations

import gzip
import io
import time

import pytest
from PIL import Image

from lora_factory.errors import ConfigError, StageError
from lora_factory.seeds import load_seed_file, parse_seed_csv, parse_seed_yaml
from spiders.sources.licences import licence_id, openverse_licence, strip_html
from spiders.sources.openverse import images_endpoint, openverse_candidates
from spiders.sources.sitemaps import parse_sitemap, sitemap_urls
from spiders.sources.wikimedia import search_titles, wikimedia_candidates

from .fixture_api import serve_fixtures

UA = "LoRAFactoryBot/0.1 (tests)"


def png(w: int = 64, h: int = 48, color: tuple[int, int, int] = (200, 80, 40)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), color).save(buf, format="PNG")
    return buf.getvalue()


# -- seed files ---------------------------------------------------------------------------
def test_seed_yaml_and_csv(tmp_path):
    y = tmp_path / "seeds.yaml"
    y.write_text("red panda:\n  - https://a.example/p1\n  - https://a.example/p1\nfox: https://b.example/\n")
    assert load_seed_file(y) == {"red panda": ["https://a.example/p1"], "fox": ["https://b.example/"]}
    c = tmp_path / "seeds.csv"
    c.write_text("topic,url\n# comment\nred panda,https://a.example/p1\n\nred panda, https://a.example/p2\n")
    assert load_seed_file(c) == {"red panda": ["https://a.example/p1", "https://a.example/p2"]}


@pytest.mark.parametrize(
    "parse,text",
    [
        (parse_seed_csv, "fox,ftp://x.example/\n"),
        (parse_seed_csv, "fox,https://x.example/,extra\n"),
        (parse_seed_yaml, "- just a list\n"),
        (parse_seed_yaml, "fox: [1, 2]\n"),
    ],
)
def test_seed_files_reject_malformed(parse, text):
    with pytest.raises(ConfigError):
        parse(text)


# -- sitemaps -----------------------------------------------------------------------------
NS = 'xmlns="http://www.sitemaps.org/schemas/sitemap/0.9"'


def _urlset(urls: list[str]) -> bytes:
    return (f'<?xml version="1.0" encoding="UTF-8"?><urlset {NS}>'
            + "".join(f"<url><loc>{u}</loc><lastmod>2024-01-01</lastmod></url>" for u in urls)
            + "</urlset>").encode()


def test_parse_sitemap_kinds_and_gzip():
    kind, locs = parse_sitemap(gzip.compress(_urlset(["https://a.example/1", "https://a.example/2"])))
    assert (kind, locs) == ("urlset", ["https://a.example/1", "https://a.example/2"])
    index = f'<sitemapindex {NS}><sitemap><loc>https://a.example/s1.xml</loc></sitemap></sitemapindex>'
    assert parse_sitemap(index.encode()) == ("sitemapindex", ["https://a.example/s1.xml"])
    for bad in (b"<html></html>", b"not xml", b'<!DOCTYPE x [<!ENTITY a "b">]><urlset/>'):
        with pytest.raises(ValueError):
            parse_sitemap(bad)


def test_sitemap_index_over_http_is_bounded():
    pages = [f"/p{i}" for i in range(30)]
    with serve_fixtures() as srv:
        b = srv.base_url
        srv.extra.update({
            "/sitemap.xml": ("application/xml", (
                f'<sitemapindex {NS}><sitemap><loc>{b}/s1.xml.gz</loc></sitemap>'
                f'<sitemap><loc>/s2.xml</loc></sitemap><sitemap><loc>{b}/missing.xml</loc></sitemap>'
                '</sitemapindex>').encode()),
            "/s1.xml.gz": ("application/gzip", gzip.compress(_urlset([b + p for p in pages[:10]]))),
            "/s2.xml": ("application/xml", _urlset([b + p for p in pages[5:30]] + ["mailto:x@y"])),
        })
        assert sitemap_urls(f"{b}/sitemap.xml", UA, max_urls=100) == [b + p for p in pages]
        assert sitemap_urls(f"{b}/sitemap.xml", UA, max_urls=12) == [b + p for p in pages[:12]]
        with pytest.raises(StageError, match="sitemap .* could not be read"):
            sitemap_urls(f"{b}/nope.xml", UA)


# -- licences -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "names,url,expected",
    [
        (("CC BY-SA 4.0", None), None, "CC-BY-SA-4.0"),
        ((None, "cc-by-sa-3.0-de"), None, "CC-BY-SA-3.0"),
        (("CC BY 2.0", "cc-by-2.0"), None, "CC-BY-2.0"),
        (("CC0",), None, "CC0-1.0"),
        (("Public domain", "pd"), None, "public-domain"),
        (("GFDL",), "https://creativecommons.org/licenses/by/3.0/", "CC-BY-3.0"),
        ((None, None), None, "unknown"),
    ],
)
def test_licence_id(names, url, expected):
    assert licence_id(*names, url=url) == expected


def test_openverse_licence_and_html():
    assert openverse_licence("by", "4.0") == "CC-BY-4.0"
    assert openverse_licence("by-nc-sa", "2.0") == "CC-BY-NC-SA-2.0"
    assert openverse_licence("cc0", "1.0") == "CC0-1.0"
    assert openverse_licence("pdm", None) == "public-domain"
    assert openverse_licence(None, None) == "unknown"
    assert strip_html('<a href="x">Jane&nbsp;Doe</a> <b>x</b>') == "Jane Doe x"
    assert strip_html("<br/>") is None


# -- Wikimedia Commons --------------------------------------------------------------------
def test_wikimedia_candidates_parse_and_page():
    with serve_fixtures() as srv:
        api = f"{srv.base_url}/w/api.php"
        cands = wikimedia_candidates("Red panda", api, UA, max_results=10)
        reqs = list(srv.requests)
    titles = [c.title for c in cands]
    # category (2 pages, via continue) first, then search (2 pages), pdf and duplicate dropped
    assert titles == ["Red panda sitting in a tree", "Red panda eating bamboo",
                      "Red panda portrait", "Red panda no licence", "Red panda in snow"]
    tree, bamboo, portrait, nolic, snow = cands
    assert tree.license == "CC-BY-SA-4.0" and tree.author == "Jane Doe"
    assert tree.description == "A red panda resting on a branch."
    assert tree.image_url == f"{srv.base_url}/upload/red-panda-tree.png"
    assert tree.page_url == f"{srv.base_url}/wiki/File:Red_panda_sitting_in_a_tree.png"
    assert tree.license_url == "https://creativecommons.org/licenses/by-sa/4.0"
    assert bamboo.author == "Mark Smith from Nepal" and bamboo.license == "CC-BY-2.0"
    assert portrait.license == "public-domain" and portrait.description == "Portrait of Ailurus fulgens."
    assert nolic.license == "unknown" and nolic.author is None
    assert snow.license == "CC0-1.0"
    assert all(c.source == "wikimedia" and c.topic == "Red panda" for c in cands)
    assert sum("cmcontinue=" in r for r in reqs) == 1 and sum("sroffset=" in r for r in reqs) == 1
    assert all("formatversion=2" in r for r in reqs)
    info = [r for r in reqs if "prop=imageinfo" in r]
    assert len(info) == 1 and "extmetadata" in info[0]


def test_wikimedia_paging_bounds():
    with serve_fixtures() as srv:
        api = f"{srv.base_url}/w/api.php"
        # max_results reached on the first category page: no continue request, no search
        cands = wikimedia_candidates("Red panda", api, UA, max_results=2)
        assert [c.title for c in cands] == ["Red panda sitting in a tree", "Red panda eating bamboo"]
        assert not any("cmcontinue=" in r or "list=search" in r for r in srv.requests)
        srv.requests.clear()
        # max_requests=1: the continue is not followed
        assert len(search_titles("red panda", api, UA, max_results=50, max_requests=1)) == 2
        assert len(srv.requests) == 1


def test_wikimedia_errors_are_one_line_stage_errors():
    with serve_fixtures() as srv:
        api = f"{srv.base_url}/w/api.php"
        with pytest.raises(StageError, match="API error badvalue") as e:
            wikimedia_candidates("broken", api, UA, use_category=False)
        assert "\n" not in str(e.value)
        with pytest.raises(StageError, match="HTTP 404"):
            wikimedia_candidates("Red panda", f"{srv.base_url}/nope.php", UA)
    with pytest.raises(StageError, match="could not be reached"):
        wikimedia_candidates("Red panda", api, UA, timeout_s=1)  # server is gone


# -- Openverse ----------------------------------------------------------------------------
def test_openverse_endpoint():
    assert images_endpoint("https://api.openverse.org/v1/") == "https://api.openverse.org/v1/images/"
    assert images_endpoint("http://h:1") == "http://h:1/v1/images/"
    assert images_endpoint("http://h:1/v1/images") == "http://h:1/v1/images/"


def test_openverse_candidates_parse_and_page():
    with serve_fixtures() as srv:
        b = srv.base_url
        cands = openverse_candidates("red panda", b, UA, max_results=10, page_size=2)
        reqs = list(srv.requests)
    assert len(reqs) == 3  # stops at page_count
    assert "q=red+panda" in reqs[0] and "license_type=all-cc" in reqs[0] and "page_size=2" in reqs[0]
    assert [c.license for c in cands] == ["CC-BY-4.0", "CC-BY-SA-2.0", "CC0-1.0", "unknown", "CC-BY-NC-3.0"]
    first = cands[0]
    assert first.image_url == f"{b}/img/ov-1.png" and first.page_url == f"{b}/photos/1"
    assert first.author == "Jane Doe" and first.title == "Red panda on a log"
    assert first.attribution.startswith('"Red panda on a log" by Jane Doe is licensed under CC BY 4.0')
    assert cands[1].author == "Mark Smith"
    assert cands[3].author is None and cands[3].attribution is None
    assert all(c.source == "openverse" for c in cands)


def test_openverse_paging_bounds():
    with serve_fixtures() as srv:
        assert len(openverse_candidates("red panda", srv.base_url, UA, max_results=3, page_size=2)) == 3
        assert len(srv.requests) == 2
        srv.requests.clear()
        assert len(openverse_candidates("red panda", srv.base_url, UA, max_results=50,
                                        page_size=2, max_pages=1)) == 2
        assert len(srv.requests) == 1


def test_openverse_errors_are_one_line_stage_errors():
    with serve_fixtures() as srv:
        with pytest.raises(StageError, match="HTTP 500"):
            openverse_candidates("fail", srv.base_url, UA)
        with pytest.raises(StageError, match="HTTP 400"):
            openverse_candidates("red panda", srv.base_url, UA, page_size=50, max_results=50)
        srv.extra["/bad/v1/images/"] = ("application/json", b'{"detail": "throttled"}')
        with pytest.raises(StageError, match="no results page .*throttled"):
            openverse_candidates("red panda", f"{srv.base_url}/bad", UA)
        srv.extra["/html/v1/images/"] = ("text/html", b"<html>")
        with pytest.raises(StageError, match="not JSON"):
            openverse_candidates("red panda", f"{srv.base_url}/html", UA)


def test_api_timeout_is_short_and_one_line():
    import socket

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)  # accepts, never answers
    try:
        started = time.monotonic()
        with pytest.raises(StageError, match="could not be reached|timed out") as e:
            openverse_candidates("x", f"http://127.0.0.1:{sock.getsockname()[1]}", UA, timeout_s=0.5)
        assert time.monotonic() - started < 5 and "\n" not in str(e.value)
    finally:
        sock.close()


# -- integration: an Openverse crawl ------------------------------------------------------
def test_crawl_with_openverse_source_keeps_api_provenance(tmp_path):
    from lora_factory.config import CrawlConfig
    from lora_factory.manifest import read_items
    from spiders.crawl import run_crawl
    from spiders.sources.select import api_images

    colours = [(200, 80, 40), (40, 160, 90), (30, 60, 200), (220, 200, 30), (120, 30, 160)]
    extra = {f"/img/ov-{i}.png": ("image/png", png(64, 48, c)) for i, c in enumerate(colours, 1)}
    with serve_fixtures(extra) as srv:
        config = CrawlConfig(
            source="openverse", openverse_api_url=f"{srv.base_url}/v1/", api_max_results=4,
            allow_loopback=True, min_image_side=16, timeout_s=60.0, autothrottle=False,
        )
        images = api_images(config, ["red panda"])
        assert len(images["red panda"]) == 4
        stats = run_crawl({"red panda": []}, tmp_path / "crawl", config,
                          state_dir=tmp_path / "state", topics_to_images=images)
    assert stats["images"] == 4
    items = sorted(read_items(tmp_path / "crawl" / "items.parquet"), key=lambda r: r["image_url"])
    b = srv.base_url
    assert [r["image_url"] for r in items] == [f"{b}/img/ov-{i}.png" for i in range(1, 5)]
    assert [r["page_url"] for r in items] == [f"{b}/photos/{i}" for i in range(1, 5)]
    assert [r["license"] for r in items] == ["CC-BY-4.0", "CC-BY-SA-2.0", "CC0-1.0", "unknown"]
    assert [r["author"] for r in items] == ["Jane Doe", "Mark Smith", "Zoo Photos", None]
    assert items[0]["title_text"] == "Red panda on a log"
    assert items[0]["figure_caption"].startswith('"Red panda on a log" by Jane Doe')
    assert items[0]["license_url"] == "https://creativecommons.org/licenses/by/4.0/"
    assert {r["topic"] for r in items} == {"red panda"}
    assert all((tmp_path / "crawl" / r["image_path"]).exists() for r in items)


def test_expand_seeds_reads_sitemaps_and_needs_every_topic():
    from lora_factory.config import CrawlConfig
    from spiders.sources.select import expand_seeds

    with serve_fixtures() as srv:
        b = srv.base_url
        srv.extra["/sitemap.xml"] = ("application/xml", _urlset([f"{b}/a", f"{b}/b", f"{b}/c"]))
        config = CrawlConfig(source="seeds", max_pages=2,
                             seeds={"fox": [f"{b}/start", f"{b}/sitemap.xml"]})
        assert expand_seeds(config, ["fox"]) == {"fox": [f"{b}/start", f"{b}/a", f"{b}/b"]}
        with pytest.raises(StageError, match="no URLs for \\['owl'\\]"):
            expand_seeds(config, ["fox", "owl"])


# -- integration: a Wikimedia Commons crawl -----------------------------------------------
def test_crawl_with_wikimedia_source_keeps_api_provenance(tmp_path):
    """``crawl.source: wikimedia`` end to end: recorded MediaWiki API answers -> candidates ->
    a real crawl of their image URLs -> items.parquet and the run's manifest carry the licence,
    author, description and page/image URLs the API gave."""
    from lora_factory.config import CrawlConfig
    from lora_factory.manifest import read_items, read_table, refresh_run_manifest
    from lora_factory.runstore import STAGES, RunStore
    from lora_factory.schemas import REJECTED_SCHEMA
    from lora_factory.storage import open_store
    from spiders.crawl import run_crawl
    from spiders.sources.select import api_images

    uploads = {
        "tree": png(64, 48, (200, 80, 40)),
        "bamboo": png(64, 48, (40, 160, 90)),
        "portrait": png(48, 64, (30, 60, 200)),
        "nolicence": png(64, 48, (220, 200, 30)),
        "snow": png(8, 8, (240, 240, 240)),  # below min_image_side: rejected, not kept
    }
    extra = {f"/upload/red-panda-{k}.png": ("image/png", v) for k, v in uploads.items()}
    run = RunStore(open_store(str(tmp_path / "store")), tmp_path / "work").create(
        ["Red panda"], "tiny", {}
    )
    with serve_fixtures(extra) as srv:
        b = srv.base_url
        config = CrawlConfig(
            source="wikimedia", wikimedia_api_url=f"{b}/w/api.php", api_max_results=10,
            allow_loopback=True, min_image_side=16, timeout_s=60.0, autothrottle=False,
        )
        images = api_images(config, ["Red panda"])
        assert len(images["Red panda"]) == 5  # the PDF is not an image candidate
        with run.stage_output("crawl") as out:
            stats = run_crawl({"Red panda": []}, out, config, state_dir=tmp_path / "state",
                              topics_to_images=images)
        fetched = [r for r in srv.requests if not r.startswith("/w/api.php")]
    assert stats["images"] == 4 and stats["rejections"] == {"too_small": 1}
    # robots.txt, then each image once; nothing else (no PDF, no description pages)
    assert sorted(fetched) == sorted(["/robots.txt", *extra])

    crawl = run.stage_path("crawl")
    items = {r["image_url"]: r for r in read_items(crawl / "items.parquet")}
    manifest = {r["image_url"]: r for r in refresh_run_manifest(run, STAGES).to_pylist()}
    assert set(items) == set(manifest) == {
        f"{b}/upload/red-panda-{k}.png" for k in ("tree", "bamboo", "portrait", "nolicence")
    }
    expected = {
        "tree": ("File:Red_panda_sitting_in_a_tree.png", "CC-BY-SA-4.0",
                 "https://creativecommons.org/licenses/by-sa/4.0", "Jane Doe",
                 "A red panda resting on a branch.", "Red panda sitting in a tree"),
        "bamboo": ("File:Red_panda_eating_bamboo.png", "CC-BY-2.0",
                   "https://creativecommons.org/licenses/by/2.0", "Mark Smith from Nepal",
                   "Red panda eating bamboo at the zoo.", "Red panda eating bamboo"),
        "portrait": ("File:Red_panda_(Ailurus_fulgens)_portrait.png", "public-domain", None,
                     "Unknown author", "Portrait of Ailurus fulgens.", "Red panda portrait"),
        "nolicence": ("File:Red_panda_no_licence.png", "unknown", None, None,
                      "A red panda whose file page has no licence template.",
                      "Red panda no licence"),
    }
    for key, (page, licence, licence_url, author, description, title) in expected.items():
        url = f"{b}/upload/red-panda-{key}.png"
        for row in (items[url], manifest[url]):
            assert row["page_url"] == f"{b}/wiki/{page}", key
            assert (row["license"], row["license_url"], row["author"]) == (licence, licence_url, author), key
            assert row["surrounding_text"] == description and row["title_text"] == title, key
            assert row["topic"] == "Red panda" and row["robots"] == "allowed", key
        assert (crawl / items[url]["image_path"]).read_bytes() == uploads[key]
    rejected = read_table(crawl / "rejected.parquet", REJECTED_SCHEMA).to_pylist()
    assert [(r["url"], r["reason"]) for r in rejected] == [(f"{b}/upload/red-panda-snow.png", "too_small")]
    assert rejected[0]["page_url"] == f"{b}/wiki/File:Red_panda_in_snow.png"
