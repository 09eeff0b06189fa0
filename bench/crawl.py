"""Crawl throughput on a generated loopback site; prints JSON figures.

The site: ``--pages`` HTML pages (default 2,000) linked as a binary tree plus a "next" chain,
each with ``--images-per-page`` unique images (default 3, so 6,000 images, ``--image-size``
64x48 by default; 640x480 shows what decoding costs with photo-sized images), served from memory
by a threaded HTTP/1.1 server in this process. The crawl runs exactly as the crawl stage runs it
(``run_crawl``: a Scrapy subprocess, robots.txt, the private-address guard with loopback
allowed, page-quality checks, full image validation and decoding, sha256 storage), with the
politeness limits lifted for loopback: no AutoThrottle, no delay, high concurrency.

Figures: pages/s and images/s (validated and stored) over the spider's own duration and over
the wall clock including the subprocess start; downloaded image responses per second; peak RSS
of the crawler process (from the kernel's accounting of waited-for children).
Target (issue 3): >= 200 validated images/s on a 2-core machine.

``--mode urls`` (issue 16): the same site's image URLs as a ``crawl.source: urls`` list
(``crawl.urls_file``, a text file), fetched by the factory's url-list crawl (no HTML page, same
validating pipeline) and by a plain downloader: a thread pool of ``urllib`` GETs of the same list
with the same concurrency, each body written to a file, nothing checked, in its own process like
the crawler's. Figures: images/s for both (own duration and wall clock) and ours/plain, over
``--repeats`` alternations (3) with the median ratios. Target: ratio >= 1.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import resource
import statistics
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lora_factory.config import CrawlConfig  # noqa: E402
from spiders.crawl import run_crawl  # noqa: E402
from spiders.sources.loopback import QuietLog, send_body, serve_in_thread  # noqa: E402
from spiders.sources.url_list import url_list_images  # noqa: E402

TEXT = (
    "The lighthouse keeper kept a careful log of every ship that passed the headland, the "
    "weather at dawn and dusk, and the oil burned by the lamp. Visitors climb the tower on "
    "summer afternoons to look across the bay towards the islands and the open sea beyond."
)


def make_site(
    pages: int, per_page: int, size: tuple[int, int] = (64, 48)
) -> dict[str, tuple[str, bytes]]:
    """path -> (content type, body). Every image has distinct bytes."""
    site: dict[str, tuple[str, bytes]] = {
        "/robots.txt": ("text/plain", b"User-agent: *\nAllow: /\n"),
    }
    n = 0
    for i in range(pages):
        imgs = []
        for _ in range(per_page):
            img = Image.new("RGB", size, ((n * 37) % 256, (n * 91) % 256, (n * 13) % 256))
            x, y = n % 40 * size[0] // 64, (n // 40) % 30 * size[1] // 48
            w, h = size[0] * 20 // 64, size[1] * 14 // 48
            ImageDraw.Draw(img).rectangle((x, y, x + w, y + h), fill="white")
            buf = io.BytesIO()
            if n % 2:
                img.save(buf, "PNG")
                path, ctype = f"/img/{n}.png", "image/png"
            else:
                img.save(buf, "JPEG", quality=85)
                path, ctype = f"/img/{n}.jpg", "image/jpeg"
            site[path] = (ctype, buf.getvalue())
            imgs.append(f'<figure><img src="{path}" alt="lighthouse {n}"><figcaption>Picture {n}</figcaption></figure>')
            n += 1
        links = [j for j in (2 * i + 1, 2 * i + 2, i + 1) if j < pages]
        nav = " ".join(f'<a href="/p/{j}.html">page {j}</a>' for j in links)
        html = (
            f"<!DOCTYPE html><html lang='en'><head><title>Lighthouse page {i}</title></head><body>"
            f"<h1>Lighthouse page {i}</h1><p>{TEXT}</p>{''.join(imgs)}<nav>{nav}</nav></body></html>"
        )
        site[f"/p/{i}.html"] = ("text/html; charset=utf-8", html.encode())
    return site


class _Handler(QuietLog, BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # TCP_NODELAY, as web servers set it: the headers and the body are two writes, and with
    # Nagle on, the body of a reply on a kept-alive connection waits for the client's delayed
    # ACK of the headers (~40 ms on Linux); a client that opens a connection per GET never sees it.
    disable_nagle_algorithm = True

    def do_GET(self) -> None:  # noqa: N802
        entry = self.server.site.get(self.path)  # type: ignore[attr-defined]
        status, (ctype, body) = (200, entry) if entry else (404, ("text/plain", b"not found"))
        send_body(self, status, ctype, body)


@contextmanager
def serve(site: dict[str, tuple[str, bytes]]) -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    server.site = site  # type: ignore[attr-defined]
    with serve_in_thread(server, "bench-site") as base:
        yield base


def bench_config(concurrency: int, timeout_s: float, **kw: object) -> CrawlConfig:
    """The crawl settings of both modes: politeness limits lifted for loopback."""
    return CrawlConfig(allow_loopback=True, autothrottle=False, download_delay_s=0.0,
                       concurrent_requests=concurrency, concurrent_requests_per_domain=concurrency,
                       timeout_s=timeout_s, min_image_side=16, **kw)


def crawl_site(site: dict[str, tuple[str, bytes]], pages: int, concurrency: int, timeout_s: float) -> dict:
    """The crawl stage's seed crawl of the whole site."""
    n_images = sum(1 for p in site if p.startswith("/img/"))
    # max_images: so the crawl finishes by itself
    config = bench_config(concurrency, timeout_s, max_pages=pages, max_images=n_images + 1, max_depth=pages)
    with tempfile.TemporaryDirectory(prefix="lf-bench-crawl-") as tmp, serve(site) as base:
        wall = time.perf_counter()
        stats = run_crawl({"lighthouse": [f"{base}/p/0.html"]}, Path(tmp) / "crawl", config)
        wall_s = time.perf_counter() - wall
    crawl_s = stats["duration_s"]
    downloaded = stats["images"] + stats["rejected"] + stats["byte_duplicates_merged"]
    return {
        "pages": stats["pages"],
        "images_validated": stats["images"],
        "images_rejected": stats["rejected"],
        "finish_reason": stats["finish_reason"],
        "crawl_s": crawl_s,
        "wall_s": round(wall_s, 1),
        "pages_per_s": round(stats["pages"] / crawl_s, 1),
        "images_downloaded_per_s": round(downloaded / crawl_s, 1),
        "images_validated_per_s": round(stats["images"] / crawl_s, 1),
        "images_validated_per_s_wall": round(stats["images"] / wall_s, 1),
        "bytes": stats["bytes"],
    }


def plain_download(urls: list[str], out: str, concurrency: int) -> tuple[int, int, float]:
    """The baseline: GET every URL with ``concurrency`` threads, write each body to
    ``out/<sha256>``; (files written, bytes, seconds)."""
    def get(url: str) -> int:
        with urllib.request.urlopen(url, timeout=60) as response:
            body = response.read()
        (Path(out) / hashlib.sha256(body).hexdigest()).write_bytes(body)
        return len(body)

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        sizes = list(pool.map(get, urls))
    return len(sizes), sum(sizes), time.perf_counter() - started


def crawl_url_list(site: dict[str, tuple[str, bytes]], concurrency: int, timeout_s: float, repeats: int) -> dict:
    """``repeats`` alternations of ours and the plain downloader: the figures of each run, and
    the median ratios (one pair of runs swings with whatever else the machine does)."""
    runs = [_url_list_once(site, concurrency, timeout_s) for _ in range(repeats)]
    median = statistics.median
    return {**runs[-1], "repeats": repeats,
            "ratio_per_run": [r["ratio"] for r in runs], "ratio_wall_per_run": [r["ratio_wall"] for r in runs],
            "ratio_median": round(median(r["ratio"] for r in runs), 2),
            "ratio_wall_median": round(median(r["ratio_wall"] for r in runs), 2)}


def _url_list_once(site: dict[str, tuple[str, bytes]], concurrency: int, timeout_s: float) -> dict:
    """The same image list fetched by the url-list crawl and by ``plain_download``, each in its
    own process (the server stays in this one for both)."""
    with tempfile.TemporaryDirectory(prefix="lf-bench-urls-") as tmp, serve(site) as base:
        urls = [base + p for p in site if p.startswith("/img/")]
        (Path(tmp) / "urls.txt").write_text("".join(f"{u}\tlighthouse picture\n" for u in urls))
        config = bench_config(concurrency, timeout_s, source="urls", urls_file=str(Path(tmp) / "urls.txt"),
                              max_images=len(urls) + 1)
        wall = time.perf_counter()
        stats = run_crawl({"lighthouse": []}, Path(tmp) / "crawl", config,
                          topics_to_images=url_list_images(config, ["lighthouse"]))
        ours_wall_s = time.perf_counter() - wall
        (Path(tmp) / "plain").mkdir()
        wall = time.perf_counter()
        with ProcessPoolExecutor(1) as child:
            files, plain_bytes, plain_s = child.submit(plain_download, urls, str(Path(tmp) / "plain"), concurrency).result()
        plain_wall_s = time.perf_counter() - wall
    ours = stats["images"] / stats["duration_s"]
    plain = files / plain_s
    return {
        "urls": len(urls),
        "images_validated": stats["images"],
        "images_rejected": stats["rejected"],
        "pages": stats["pages"],  # 0: no HTML page is fetched
        "finish_reason": stats["finish_reason"],
        "crawl_s": stats["duration_s"],
        "wall_s": round(ours_wall_s, 1),
        "images_validated_per_s": round(ours, 1),
        "images_validated_per_s_wall": round(stats["images"] / ours_wall_s, 1),
        "plain_files": files,
        "plain_bytes": plain_bytes,
        "plain_s": round(plain_s, 2),
        "plain_images_per_s": round(plain, 1),
        "plain_images_per_s_wall": round(files / plain_wall_s, 1),
        "ratio": round(ours / plain, 2),  # own durations: the spider's vs the pool's
        "ratio_wall": round((stats["images"] / ours_wall_s) / (files / plain_wall_s), 2),  # incl. process starts
        "bytes": stats["bytes"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("site", "urls"), default="site",
                        help="site: crawl the pages (default); urls: the image URL list, ours vs a plain downloader")
    parser.add_argument("--pages", type=int, default=2000)
    parser.add_argument("--images-per-page", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--timeout-s", type=float, default=600.0)
    parser.add_argument("--image-size", default="64x48", help="WxH of every image (default 64x48)")
    parser.add_argument("--repeats", type=int, default=3, help="--mode urls: alternations of ours and plain")
    args = parser.parse_args()
    width, height = (int(v) for v in args.image_size.lower().split("x"))

    load_before = os.getloadavg()
    started = time.perf_counter()
    site = make_site(args.pages, args.images_per_page, (width, height))
    generate_s = time.perf_counter() - started
    n_images = sum(1 for p in site if p.startswith("/img/"))
    figures = (crawl_url_list(site, args.concurrency, args.timeout_s, args.repeats) if args.mode == "urls"
               else crawl_site(site, args.pages, args.concurrency, args.timeout_s))
    peak_rss_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB on Linux
    print(json.dumps({
        "mode": args.mode,
        "site_pages": args.pages,
        "site_images": n_images,
        "site_generate_s": round(generate_s, 1),
        **figures,
        "peak_rss_mb": round(peak_rss_kb / 1024, 1),
        "concurrency": args.concurrency,
        "image_size": f"{width}x{height}",
        "cpus": os.cpu_count(),
        # The machine's load (1, 5, 15 min) before the site was built and after the crawl: a
        # figure measured beside other work is not comparable.
        "load_avg_before": [round(v, 2) for v in load_before],
        "load_avg_after": [round(v, 2) for v in os.getloadavg()],
    }, indent=2))


if __name__ == "__main__":
    main()
