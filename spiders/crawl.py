"""``run_crawl``: the crawl stage's entry point for the rest of the factory.

Why a subprocess: Scrapy's reactor runs once per process, and a crawl must not be able to hang
or crash the caller. The child (``python -m spiders.run``) gets its ``CrawlSpec`` on stdin, is
bounded by wall clock, its progress lines are streamed to ``on_progress``, and every way it can
fail ends in one ``StageError`` line that says what to do.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

from pydantic import ValidationError

from lora_factory.catalog import CRAWL_CONFIG, CRAWL_STATS
from lora_factory.config import CrawlConfig
from lora_factory.errors import StageError
from lora_factory.secrets import redact_text

from .spec import CrawlSpec, Frontier

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIG_NAME = CRAWL_CONFIG.path  # the spec as recorded: credentials masked
LOG_NAME = "crawl.log"
STATS_NAME = CRAWL_STATS.path
GRACE_S = 20.0  # after SIGINT, how long the child may take to finish in-flight work and write


def wall_clock_bound(config: CrawlConfig) -> float:
    """timeout_s plus room for interpreter start-up and Scrapy's graceful shutdown."""
    return config.timeout_s + 30.0 + 0.1 * config.timeout_s


def _check_seeds(
    topics_to_urls: dict[str, list[str]],
    topics_to_images: dict[str, list[dict[str, Any]]] | None = None,
) -> list[str]:
    """The user's seed pages must be http(s); API image URLs are judged by the crawl itself."""
    urls = [u for us in topics_to_urls.values() for u in us]
    images = [c["image_url"] for cs in (topics_to_images or {}).values() for c in cs]
    if not urls and not images:
        raise StageError("the crawl has no seed URLs: give each topic at least one page URL")
    bad = [
        u for u in urls if urlsplit(u).scheme not in ("http", "https") or not urlsplit(u).hostname
    ]
    if bad:
        raise StageError(f"seed URL {redact_text(bad[0])!r} is not an http(s) URL: fix the topics/seed URLs")
    return urls + images


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


def empty_crawl_error(urls: list[str], stats: dict[str, Any]) -> StageError:
    """The one line for a crawl that kept no image: what it tried and what stopped it."""
    shown = ", ".join(urls[:3]) + (f" (+{len(urls) - 3} more)" if len(urls) > 3 else "")
    failed = stats.get("pages_not_parsed") or {}
    if "private_address" in failed:
        return StageError(
            f"the crawl refused {redact_text(shown)}: loopback/private addresses are blocked; "
            "set crawl.allow_loopback=true (127.0.0.1 only) or crawl.allow_private_addresses=true "
            "to crawl them"
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
        f"the crawl found no images at {redact_text(shown)}{why}: check the topics/seed URLs or "
        "allow_private_addresses"
    )


def _stop(proc: subprocess.Popen[str]) -> None:
    """SIGINT first (Scrapy shuts down gracefully and the journal stays consistent), then kill."""
    if proc.poll() is not None:
        return
    try:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=GRACE_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _child(spec: CrawlSpec, log: IO[str]) -> subprocess.Popen[str]:
    """Start ``python -m spiders.run`` and hand it the spec (with its secrets) on stdin."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    proc = subprocess.Popen(
        [sys.executable, "-m", "spiders.run", "--spec", "-"],
        stdout=subprocess.PIPE, stderr=log, stdin=subprocess.PIPE, text=True, encoding="utf-8",
        env=env, cwd=REPO_ROOT,
    )
    assert proc.stdin is not None
    try:
        proc.stdin.write(spec.model_dump_json())
        proc.stdin.close()
    except BrokenPipeError:  # the child died at start-up: its exit code and log tell why
        pass
    return proc


def _follow(
    proc: subprocess.Popen[str], config: CrawlConfig, log_path: Path,
    on_progress: Callable[[str], None] | None,
) -> int:
    """Stream the child's progress lines until it exits (or the wall-clock bound); its exit code."""
    bound = wall_clock_bound(config)
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
        return proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        raise StageError(
            f"the crawl did not exit within {bound:.0f} s and was stopped; see {log_path}"
        ) from None
    finally:
        _stop(proc)
        reader.join(timeout=5)
        proc.stdout.close()


def run_crawl(
    topics_to_urls: dict[str, list[str]],
    out_dir: Path,
    config: CrawlConfig,
    on_progress: Callable[[str], None] | None = None,
    state_dir: Path | None = None,
    models_dir: Path | None = None,
    topics_to_images: dict[str, list[dict[str, Any]]] | None = None,
    frontier: Frontier | None = None,
    require_images: bool = True,
) -> dict[str, Any]:
    """Crawl the seeds into ``out_dir`` (items.parquet, pages.parquet, crawl_stats.json, images/).

    ``state_dir`` holds the resumption journal and the downloaded-image store; give the same
    folder to a re-run (the crawl task uses its stage's scratch folder) and the crawl continues
    where the previous attempt stopped, never downloading an image twice. Default:
    ``out_dir/.state``. ``models_dir`` is where the relevance model is cached. ``frontier``
    makes this crawl one worker of a distributed run (``spiders.workers`` starts them).

    Returns the crawl stats. Raises ``StageError`` if the crawl fails, overruns its time bound,
    or (with ``require_images``) collects no images. If the caller is interrupted (an exception
    from ``on_progress``, KeyboardInterrupt, a cancelled task), the child is stopped gracefully
    before re-raising.
    """
    urls = _check_seeds(topics_to_urls, topics_to_images)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / STATS_NAME).unlink(missing_ok=True)  # never report a previous run's stats
    try:
        spec = CrawlSpec(
            topics=topics_to_urls, out_dir=out_dir.resolve(), crawl=config,
            state_dir=Path(state_dir or out_dir / ".state").resolve(),
            models_dir=Path(models_dir).resolve() if models_dir else None,
            images=topics_to_images or {}, frontier=frontier,
        )
    except ValidationError as exc:
        raise StageError(f"the crawl spec is not valid: {exc.errors()[0]['msg']}") from None
    (out_dir / CONFIG_NAME).write_text(spec.redacted_json(), encoding="utf-8")
    log_path = out_dir / LOG_NAME
    with open(log_path, "w", encoding="utf-8") as log:
        returncode = _follow(_child(spec, log), config, log_path, on_progress)
    if returncode != 0:
        raise StageError(
            f"the crawl failed (exit code {returncode}): {redact_text(_last_line(log_path)) or 'no output'}"
        )
    try:
        stats: dict[str, Any] = json.loads((out_dir / STATS_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise StageError(f"the crawl wrote no readable {STATS_NAME} in {out_dir}: {exc}") from exc
    if require_images and stats.get("images", 0) == 0:
        raise empty_crawl_error(urls, stats)
    return stats
