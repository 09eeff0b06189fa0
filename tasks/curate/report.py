"""``curate/report.html``: one self-contained page answering "what was dropped, and why?".

Counts per reason and per filter, score histograms (kept vs dropped) as inline PNGs, thumbnails
grouped by reason with their sentence, duplicate groups side by side (kept copy first), the kept
set, and the dataset statistics.
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from lora_factory.config import CurateConfig

from .._html import thumbnail_uri

HISTOGRAMS = (
    ("sharpness", "sharpness (variance of Laplacian, log10)", True),
    ("brightness", "mean brightness", False),
    ("contrast", "contrast (std of luma)", False),
    ("text_topic", "text-topic cosine (MiniLM)", False),
    ("clip_image_text", "CLIP image-text cosine", False),
    ("clip_image_topic", "CLIP image-topic cosine", False),
)


def _histogram(values_kept: np.ndarray, values_dropped: np.ndarray, title: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(3.6, 2.2), dpi=90)
    both = np.concatenate([values_kept, values_dropped])
    bins = np.histogram_bin_edges(both, bins=20) if len(both) else 10
    ax.hist([values_kept, values_dropped], bins=bins, stacked=True, label=["kept", "dropped"],
            color=["#3a7", "#c55"])
    ax.set_title(title, fontsize=8)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=6)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def render_report(result: Any, items: list[dict[str, Any]], crawl_dir: Path, cfg: CurateConfig) -> str:
    by_id = {it["item_id"]: it for it in items}
    limit = cfg.report_thumbnails_per_reason
    esc = html.escape

    def card(iid: str, note: str) -> str:
        it = by_id[iid]
        src = thumbnail_uri(crawl_dir / it["image_path"])
        return (f'<figure><img src="{src}" alt=""><figcaption>{esc(iid[:10])}<br>'
                f'<a href="{esc(it["page_url"])}">page</a> {esc(note)}</figcaption></figure>')

    counts = Counter(d["reason"] for d in result.dropped)
    rows = f"<tr><td>kept</td><td>{len(result.kept)}</td></tr>" + "".join(
        f"<tr><td>{esc(k)}</td><td>{v}</td></tr>" for k, v in counts.most_common())
    filters = "".join(f"<tr><td>{esc(k)}</td><td>{esc(result.filter_reasons.get(k, ''))}</td><td>{v}</td></tr>"
                      for k, v in sorted(result.removed_by.items(), key=lambda kv: -kv[1]))

    hists = []
    for key, title, log in HISTOGRAMS:
        kept = np.array([s[key] for s in result.scores if s["decision"] == "keep" and s.get(key) is not None], float)
        drop = np.array([s[key] for s in result.scores if s["decision"] == "drop" and s.get(key) is not None], float)
        if not len(kept) and not len(drop):
            continue
        if log:
            kept, drop = np.log10(1 + kept), np.log10(1 + drop)
        hists.append(f'<img class=h src="{_histogram(kept, drop, title)}" alt="{esc(title)}">')

    sections = []
    groups: dict[str, list[dict[str, Any]]] = {}
    for d in result.dropped:
        groups.setdefault(d["reason"], []).append(d)
    for reason, ds in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        if reason.endswith("duplicate"):
            reps: dict[str, list[dict[str, Any]]] = {}
            for d in ds:
                reps.setdefault(d["dup_of"] or "", []).append(d)
            blocks = []
            for rep, copies in list(reps.items())[:limit]:
                cards = ([card(rep, "kept")] if rep in by_id else []) + [
                    card(c["item_id"], f"score {c['score']:.3g}" if c["score"] is not None else "") for c in copies]
                blocks.append(f"<div class=dup>{''.join(cards)}</div>")
            body = "".join(blocks)
        else:
            body = "<div class=g>" + "".join(card(d["item_id"], d.get("detail") or "") for d in ds[:limit]) + "</div>"
        more = f" (showing {limit})" if len(ds) > limit else ""
        sections.append(f"<h2>Dropped: {esc(reason)} ({len(ds)}){more}</h2>{body}")
    kept_cards = "".join(card(it["item_id"], f"{it['width']}x{it['height']}") for it in result.kept[: limit * 4])
    notes = "".join(f"<li>{esc(n)}</li>" for n in result.notes)
    return (
        "<!doctype html><meta charset=utf-8><title>Curation report</title>"
        "<style>body{font-family:sans-serif;margin:2em}.g{display:flex;flex-wrap:wrap;gap:8px}"
        ".dup{display:flex;gap:6px;padding:4px;margin:4px 0;border-left:3px solid #c55}"
        "figure{margin:0;width:110px;font-size:11px}figure img{max-width:96px;max-height:96px}"
        "td{padding:2px 10px;border-bottom:1px solid #ddd}.h{margin:4px}</style>"
        f"<h1>Curation report</h1><table><tr><th>decision / reason</th><th>items</th></tr>{rows}</table>"
        f"<h2>Filters</h2><table><tr><th>filter</th><th>reason</th><th>removed</th></tr>{filters}</table>"
        f"<ul>{notes}</ul><h2>Scores</h2><div class=g>{''.join(hists)}</div>{''.join(sections)}"
        f"<h2>Kept ({len(result.kept)})</h2><div class=g>{kept_cards}</div>"
        f"<h2>Dataset statistics</h2><pre>{esc(json.dumps(result.stats, indent=2, default=float))}</pre>"
    )
