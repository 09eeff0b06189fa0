"""What every command shares: option types, reading topics and overrides, the one-line error."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from lora_factory.errors import FactoryError
from lora_factory.profiles import parse_set_args
from lora_factory.secrets import redact_text
from lora_factory.seeds import load_seed_file
from lora_factory.textfiles import read_topics_file

DEMO_TOPICS_FILE = Path(__file__).resolve().parent.parent / "configs" / "topics" / "demo.yaml"

TopicsOpt = Annotated[list[str] | None, typer.Option("--topics", "-t", help="Topics, comma-separated or repeated.")]
TopicsFileOpt = Annotated[Path | None, typer.Option("--topics-file", help="YAML list (or topics: key) or a text file.")]
ProfileOpt = Annotated[str, typer.Option("--profile", "-p", help="tiny, sd15, sdxl or a YAML path.")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", help="Override a setting: section.key=value.")]
StoreOpt = Annotated[str | None, typer.Option("--store", help="Run store: a folder or s3://bucket/prefix.")]
HomeOpt = Annotated[str | None, typer.Option("--home", help="Local data folder (models, MLflow DB).")]
TrackingOpt = Annotated[str | None, typer.Option("--tracking-uri", help="MLflow tracking URI.")]
SeedsOpt = Annotated[Path | None, typer.Option(
    "--seeds", help="Seed pages or sitemaps (source 'seeds'): YAML topic -> URLs, or CSV topic,url rows.")]


def fail(e: FactoryError) -> NoReturn:
    typer.echo(f"error: {redact_text(str(e))}", err=True)
    raise typer.Exit(e.exit_code)


def runtime_defaults() -> None:
    """Defaults that keep an offline run offline, robust on a busy machine, and readable."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # Prefect's temporary API server gets 20 s to start by default; a loaded 2-core machine
    # needs about that much, and missing it fails the run before it begins.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import logging

    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)


def read_topics(topics: list[str] | None, topics_file: Path | None) -> list[str]:
    """Topics from repeated/comma-separated --topics and/or a YAML/text file."""
    out: list[str] = []
    for t in topics or []:
        out += t.split(",")
    if topics_file is not None:
        out += read_topics_file(topics_file)
    return out


def overrides(
    sets: list[str] | None = None,
    store: str | None = None,
    home: str | None = None,
    tracking_uri: str | None = None,
    seeds: Path | None = None,
    max_pages: int | None = None,
    max_images: int | None = None,
) -> dict[str, Any]:
    ov = parse_set_args(sets or [])
    for key, value in (("store.root", store), ("home", home), ("tracking.uri", tracking_uri),
                       ("crawl.max_pages", max_pages), ("crawl.max_images", max_images)):
        if value is not None:
            ov[key] = value
    if seeds is not None:
        ov["crawl.seeds"] = load_seed_file(seeds)
        ov.setdefault("crawl.source", "seeds")
    return ov


def self_command() -> str:
    """How the user can call us again: the bare name if it is on PATH, else the full path."""
    if shutil.which("lora-factory"):
        return "lora-factory"
    exe = Path(sys.argv[0])
    return str(exe.resolve()) if exe.name == "lora-factory" else "lora-factory"
