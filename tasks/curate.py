"""Curate: turn the crawl's candidate pool into a training set, writing a reason for every drop.

This is the walking-skeleton filter set: undecodable images, images too small to train on, and
exact duplicates (identical decoded pixels under different bytes: re-saved copies, stripped
metadata). Semantic dedup, CLIP alignment and quality filters extend ``curate_items``.
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
from PIL import Image, ImageOps, UnidentifiedImageError

from lora_factory.config import CurateConfig
from lora_factory.context import RunRef, run_stage
from lora_factory.errors import StageError
from lora_factory.manifest import ITEM_SCHEMA, decision, read_items, write_decisions, write_table

from ._prefect import stage_task

STAGE = "curate"
DATASET_SCHEMA = pa.schema(list(ITEM_SCHEMA) + [pa.field("pixel_sha256", pa.string())])


@dataclass
class CurateResult:
    kept: list[dict[str, Any]]
    decisions: list[dict[str, Any]]

    @property
    def dropped(self) -> list[dict[str, Any]]:
        return [d for d in self.decisions if d["decision"] == "drop"]

    def counts(self) -> dict[str, int]:
        c = Counter(d["reason"] for d in self.dropped)
        return {"kept": len(self.kept), "dropped": len(self.dropped), **{f"drop_{k}": v for k, v in c.items()}}


def pixel_hash(img: Image.Image) -> str:
    """sha256 of the decoded RGB pixels and size: equal for re-encodings of the same picture."""
    rgb = img.convert("RGB")
    h = hashlib.sha256(f"{rgb.width}x{rgb.height}".encode())
    h.update(rgb.tobytes())
    return h.hexdigest()


def _preference(item: dict[str, Any]) -> tuple[int, Any, str]:
    """Which copy of a duplicate group represents it: known licence first, then earliest seen."""
    return (item["license"] == "unknown", item["crawl_time"], item["item_id"])


def curate_items(items: list[dict[str, Any]], crawl_dir: Path, cfg: CurateConfig) -> CurateResult:
    """Decide keep/drop for each crawled item. Pure: reads images, writes nothing."""
    decisions: list[dict[str, Any]] = []
    kept: list[dict[str, Any]] = []
    first_by_pixels: dict[str, str] = {}
    for item in sorted(items, key=_preference):
        iid = item["item_id"]
        try:
            with Image.open(crawl_dir / item["image_path"]) as im:
                im = ImageOps.exif_transpose(im)
                im.load()
                w, h = im.size
                phash = pixel_hash(im) if cfg.exact_dedup else None
        except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as e:
            decisions.append(decision(iid, STAGE, False, "corrupt", detail=f"cannot decode: {e}"))
            continue
        if min(w, h) < cfg.min_side:
            decisions.append(
                decision(iid, STAGE, False, "too_small", score=float(min(w, h)),
                         detail=f"{w}x{h} px: shorter side below curate.min_side={cfg.min_side}")
            )
            continue
        if phash is not None and phash in first_by_pixels:
            rep = first_by_pixels[phash]
            decisions.append(
                decision(iid, STAGE, False, "exact_duplicate", score=1.0, dup_of=rep,
                         detail="identical pixels to a kept image")
            )
            continue
        if phash is not None:
            first_by_pixels[phash] = iid
        decisions.append(decision(iid, STAGE, True, score=float(min(w, h))))
        kept.append({**item, "pixel_sha256": phash})
    return CurateResult(kept, decisions)


def _thumb_data_uri(path: Path, size: int = 96) -> str:
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            im.thumbnail((size, size))
            buf = io.BytesIO()
            im.save(buf, "PNG")
        return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    except (OSError, UnidentifiedImageError):
        return ""


def render_report(result: CurateResult, items: list[dict[str, Any]], crawl_dir: Path) -> str:
    """A self-contained HTML page: counts per reason and thumbnails of what was kept and dropped."""
    by_id = {it["item_id"]: it for it in items}
    groups: dict[str, list[dict[str, Any]]] = {}
    for d in result.dropped:
        groups.setdefault(d["reason"], []).append(d)

    def card(item: dict[str, Any], note: str) -> str:
        src = _thumb_data_uri(crawl_dir / item["image_path"])
        return (
            f'<figure><img src="{src}" alt=""><figcaption>{html.escape(item["item_id"][:10])}<br>'
            f'<a href="{html.escape(item["page_url"])}">page</a> {html.escape(note)}</figcaption></figure>'
        )

    rows = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{v}</td></tr>" for k, v in sorted(result.counts().items())
    )
    sections = []
    for reason, ds in sorted(groups.items()):
        cards = []
        for d in ds:
            note = d.get("detail") or ""
            cards.append(card(by_id[d["item_id"]], note))
            if d.get("dup_of") and d["dup_of"] in by_id:
                cards.append(card(by_id[d["dup_of"]], "kept original"))
        sections.append(f"<h2>Dropped: {html.escape(reason)} ({len(ds)})</h2><div class=g>{''.join(cards)}</div>")
    kept_cards = "".join(card(it, f"{it['width']}x{it['height']}") for it in result.kept)
    return (
        "<!doctype html><meta charset=utf-8><title>Curation report</title>"
        "<style>body{font-family:sans-serif;margin:2em}.g{display:flex;flex-wrap:wrap;gap:8px}"
        "figure{margin:0;width:110px;font-size:11px}img{max-width:96px;max-height:96px}"
        "td{padding:2px 10px;border-bottom:1px solid #ddd}</style>"
        f"<h1>Curation report</h1><table>{rows}</table>{''.join(sections)}"
        f"<h2>Kept ({len(result.kept)})</h2><div class=g>{kept_cards}</div>"
    )


def write_outputs(result: CurateResult, items: list[dict[str, Any]], crawl_dir: Path, out: Path) -> None:
    write_table(out / "dataset.parquet", result.kept, DATASET_SCHEMA)
    write_decisions(out / "decisions.parquet", result.decisions)
    write_decisions(out / "rejected.parquet", result.dropped)
    (out / "report.html").write_text(render_report(result, items, crawl_dir))


def run_curate(crawl_dir: Path, cfg: CurateConfig, out: Path) -> CurateResult:
    """The stage: read crawl outputs, decide, write ``curate/`` outputs; error if nothing is left."""
    items = read_items(crawl_dir / "items.parquet")
    result = curate_items(items, crawl_dir, cfg)
    write_outputs(result, items, crawl_dir, out)
    if not result.kept:
        worst = Counter(d["reason"] for d in result.dropped).most_common(1)
        which = f"'{worst[0][0]}' removed {worst[0][1]} of {len(items)}" if worst else "no items came in"
        raise StageError(f"no images left after curation: {which}; loosen that filter or crawl more")
    return result


@stage_task(STAGE)
def curate_task(ref: RunRef) -> dict[str, int]:
    with run_stage(ref, STAGE) as st:
        st.log_params(st.config.curate.model_dump())
        try:
            result = run_curate(st.input("crawl"), st.config.curate, st.out)
        finally:
            if (st.out / "report.html").exists():
                st.log_artifact(st.out / "report.html")
        st.log_metrics(result.counts())
        st.log_artifact(st.out / "rejected.parquet")
    return result.counts()
