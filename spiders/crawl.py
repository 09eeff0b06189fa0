"""``run_crawl``: the crawl stage's entry point for the rest of the factory.

Why a subprocess: Scrapy's reactor runs once per process, and a crawl must not be able to hang
or crash the caller. The child (``python -m spiders.run``) is bounded by wall clock, its
progress lines are streamed to ``on_progress``, and every way it can fail ends in one
``StageError`` line that says what to do.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

from lora_factory.config import CrawlConfig
from lora_factory.errors import StageError

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIG_NAME = "crawl_config.json"
LOG_NAME = "crawl.log"
STATS_NAME = "crawl_stats.json"


def wall_clock_bound(config: CrawlConfig) -> float:
    """timeout_s plus room for interpreter start-up and Scrapy's graceful shutdown."""
    return config.timeout_s + 30.0 + 0.1 * config.timeout_s


def _check_seeds(topics_to_urls: dict[str, list[str]]) -> list[str]:
    urls = [u for us in topics_to_urls.values() for u in us]
    if not urls:
        raise StageError("the crawl has no seed URLs: give each topic at least one page URL")
    bad = [
        u for u in urls if urlsplit(u).scheme not in ("http", "https") or not urlsplit(u).hostname
    ]
    if bad:
        raise StageError(f"seed URL {bad[0]!r} is not an http(s) URL: fix the topics/seed URLs")
    return urls


def _last_line(path: Path) -> str:
    try:
        lines = [
            ln.strip() for ln in path.read_text(encoding="utf-8", errors="replace").splitlines()
        ]
    except OSError:
        return ""
    return next((ln for ln in reversed(lines) if ln), "")


def _pump(stream: IO[str], lines: queue.Queue[str | None]) -> None:
    for line in stream:
        lines.put(line.rstrip("\n"))
    lines.put(None)


def _empty_crawl_error(urls: list[str], stats: dict[str, Any]) -> StageError:
    shown = ", ".join(urls[:3]) + (f" (+{len(urls) - 3} more)" if len(urls) > 3 else "")
    failed = stats.get("pages_not_parsed") or {}
    if "private_address" in failed:
        return StageError(
            f"the crawl refused {shown}: loopback/private addresses are blocked; "
            "set crawl.allow_private_addresses=true to crawl them"
        )
    notes = [
        f"{what}: {', '.join(f'{k} x{v}' for k, v in counts.items())}"
        for what, counts in (
            ("pages not parsed", failed),
            ("images rejected", stats.get("rejections") or {}),
        )
        if counts
    ]
    why = f" ({'; '.join(notes)})" if notes else ""
    return StageError(
        f"the crawl found no images at {shown}{why}: check the topics/seed URLs or allow_private_addresses"
    )


def run_crawl(
    topics_to_urls: dict[str, list[str]],
    out_dir: Path,
    config: CrawlConfig,
    on_progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Crawl the seeds into ``out_dir`` (items.parquet, pages.parquet, crawl_stats.json, images/).

    Returns the crawl stats. Raises ``StageError`` if the crawl fails, overruns its time bound,
    or collects no images.
    """
    urls = _check_seeds(topics_to_urls)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / STATS_NAME).unlink(missing_ok=True)  # never report a previous run's stats
    spec = {
        "topics": topics_to_urls,
        "out_dir": str(out_dir.resolve()),
        "crawl": config.model_dump(mode="json"),
    }
    config_path = (out_dir / CONFIG_NAME).resolve()
    config_path.write_text(json.dumps(spec, indent=2) + "\n", encoding="utf-8")

    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    log_path = out_dir / LOG_NAME
    bound = wall_clock_bound(config)
    with open(log_path, "w", encoding="utf-8") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "spiders.run", "--config", str(config_path)],
            stdout=subprocess.PIPE,
            stderr=log,
            stdin=subprocess.DEVNULL,
            text=True,
            env=env,
            cwd=REPO_ROOT,
        )
        lines: queue.Queue[str | None] = queue.Queue()
        assert proc.stdout is not None
        reader = threading.Thread(target=_pump, args=(proc.stdout, lines), daemon=True)
        reader.start()
        deadline = time.monotonic() + bound
        try:
            while True:
                try:
                    line = lines.get(timeout=max(0.0, min(1.0, deadline - time.monotonic())))
                except queue.Empty:
                    if time.monotonic() >= deadline:
                        raise StageError(
                            f"the crawl did not finish within {bound:.0f} s (timeout_s={config.timeout_s:g} plus "
                            f"margin) and was stopped; see {log_path}"
                        ) from None
                    continue
                if line is None:
                    break
                if on_progress and line:
                    on_progress(line)
            returncode = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            raise StageError(
                f"the crawl did not exit within {bound:.0f} s and was stopped; see {log_path}"
            ) from None
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            reader.join(timeout=5)
            proc.stdout.close()

    if returncode != 0:
        raise StageError(
            f"the crawl failed (exit code {returncode}): {_last_line(log_path) or 'no output'}"
        )
    try:
        stats: dict[str, Any] = json.loads((out_dir / STATS_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise StageError(f"the crawl wrote no readable {STATS_NAME} in {out_dir}: {exc}") from exc
    if stats.get("images", 0) == 0:
        raise _empty_crawl_error(urls, stats)
    return stats
