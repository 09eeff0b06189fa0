"""``label/report.html``: one self-contained page to review the captions before training.

Every kept image with its caption, the candidates it was chosen among and their CLIP scores
(likely hallucinations marked), its tags, licence, author and source page; tag frequency bars;
the images the licence policy or the reviewer dropped. Notes at the top say when a model is a
random ``tiny:`` one, so nobody reads meaning into its captions or scores.
"""

from __future__ import annotations

import html
from collections import Counter
from pathlib import Path
from typing import Any

from datatools.captions import without
from datatools.doctor import word_frequency
from lora_factory.schemas import CaptionStats

from .._html import thumbnail_uri

esc = html.escape
CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}
h1{font-size:1.5em}h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ddd}
.note{background:#fff4d6;border:1px solid #e0c060;padding:.5em .8em;margin:.4em 0;border-radius:4px}
.kv td{padding:2px 10px 2px 0}.bars{display:grid;grid-template-columns:repeat(auto-fill,minmax(330px,1fr));gap:1em}
.bar{display:flex;align-items:center;gap:6px;font-size:12px}.bar span.l{width:130px;text-align:right;overflow:hidden;
white-space:nowrap;text-overflow:ellipsis}.bar span.b{background:#4a8;height:10px;display:inline-block}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(420px,1fr));gap:12px}
.card{border:1px solid #ddd;border-radius:6px;padding:8px;display:flex;gap:10px}
.card img{flex:none;object-fit:contain;background:#f4f4f4}.cap{font-weight:600}
.meta{color:#555;font-size:12px}table.c{border-collapse:collapse;font-size:12px;margin-top:4px;width:100%}
table.c td{border-top:1px solid #eee;padding:2px 4px;vertical-align:top}tr.win td{background:#e8f6ee}
.flag{color:#b00;font-weight:600}.badge{font-size:11px;background:#eee;border-radius:3px;padding:0 4px;margin-left:4px}
.drop{display:inline-block;width:150px;margin:4px;font-size:11px;vertical-align:top}
"""


def _bars(title: str, counts: dict[str, int], top: int = 20) -> str:
    items = Counter(counts).most_common(top)
    if not items:
        return f"<div><h3>{esc(title)}</h3><p class=meta>none</p></div>"
    peak = items[0][1] or 1
    rows = "".join(f'<div class=bar><span class=l title="{esc(k)}">{esc(k)}</span>'
                   f'<span class=b style="width:{max(2, int(180 * v / peak))}px"></span>{v}</div>' for k, v in items)
    return f"<div><h3>{esc(title)}</h3>{rows}</div>"


def _score(v: float | None) -> str:
    return "" if v is None else f"{v:.3f}"


def _candidates(lab: dict[str, Any]) -> str:
    rows = []
    for c in lab.get("candidates") or []:
        win = c["source"] == lab["caption_source"]
        flag = ' <span class=flag title="far below the other candidates\' CLIP scores">likely hallucination</span>' \
            if c["hallucination"] else ""
        rows.append(f'<tr class="{"win" if win else ""}"><td>{esc(c["source"])}</td><td>{esc(c["text"])}{flag}</td>'
                    f'<td>{_score(c["score"])}</td></tr>')
    return f"<table class=c>{''.join(rows)}</table>" if rows else ""


def _tags(lab: dict[str, Any]) -> str:
    parts = [f"subject: {', '.join(lab.get('subject') or [])}"] if lab.get("subject") else []
    parts += [f"{k}: {lab[k]}" for k in ("style", "movement", "medium") if lab.get(k)]
    if lab.get("keywords"):
        parts.append(f"keywords: {', '.join(lab['keywords'])}")
    src = f" ({lab.get('tag_source')})" if lab.get("tag_source") else ""
    return f"<div class=meta>tags{esc(src)}: {esc('; '.join(parts)) or 'none'}</div>"


def _card(lab: dict[str, Any], image: Path, px: int) -> str:
    badges = "".join(f"<span class=badge>{b}</span>" for b, on in
                     (("trimmed to fit", lab.get("trimmed")), ("edited by a person", lab["caption_source"] == "human"))
                     if on)
    score = f" · CLIP {_score(lab.get('caption_score'))}" if lab.get("caption_score") is not None else ""
    page = lab.get("page_url") or ""
    return (f'<div class=card id="{esc(lab["item_id"][:16])}"><img src="{thumbnail_uri(image, px, "JPEG")}" '
            f'width={px} height={px} alt=""><div><div class=cap>{esc(lab["caption"])}{badges}</div>'
            f'<div class=meta>source {esc(lab["caption_source"])}{score} · {lab.get("caption_tokens") or "?"} tokens · '
            f'{esc(lab["file_name"])}</div>{_candidates(lab)}{_tags(lab)}'
            f'<div class=meta>licence {esc(lab.get("license") or "unknown")} · author {esc(lab.get("author") or "not stated")}'
            f' · <a href="{esc(page)}">source page</a></div></div></div>')


def render_report(labels: list[dict[str, Any]], dropped: list[dict[str, Any]], items: dict[str, dict[str, Any]],
                  crawl_dir: Path, dataset_dir: Path, stats: CaptionStats, notes: list[str], px: int) -> str:
    """The whole page. ``dropped``: decision rows of the images label dropped."""
    head = [("images kept", stats.num_images), ("dropped", len(dropped)),
            ("token budget", stats.token_budget or "?"), ("longest caption (tokens)", stats.tokens_max or "?"),
            ("trimmed to fit", stats.over_token_budget), ("likely hallucinations flagged", stats.hallucinations),
            ("captions edited by a person", stats.human_captions),
            ("caption sources", ", ".join(f"{k} {v}" for k, v in stats.sources.items())),
            ("tagger", ", ".join(f"{k} {v}" for k, v in stats.tagger.items() if v) or "-"),
            ("concept summary", stats.concept_summary or "-"), ("trigger word", stats.trigger_word)]
    kv = "".join(f"<tr><td>{esc(k)}</td><td>{esc(str(v))}</td></tr>" for k, v in head)
    caption_bars = (_bars("caption tags", stats.tag_frequency) if stats.caption_style == "tags"
                    else _bars("caption words", word_frequency([without(lab["caption"], [stats.trigger_word]) for lab in labels], 20)))
    bars = caption_bars + "".join(
        _bars(f"tagger: {name}", counts, 15) for name, counts in stats.tag_fields.items())
    cards = "".join(_card(lab, dataset_dir / lab["file_name"], px) for lab in labels)
    drops = "".join(
        f'<div class=drop><img src="{thumbnail_uri(crawl_dir / items[d["item_id"]]["image_path"], 96, "JPEG")}" alt=""><br>'
        f'{esc(d["reason"])}: {esc(d.get("detail") or "")}<br><a href="{esc(items[d["item_id"]].get("page_url") or "")}">page</a></div>'
        for d in dropped if d["item_id"] in items)
    notes_html = "".join(f"<div class=note>{esc(n)}</div>" for n in notes)
    return (f"<!doctype html><html><head><meta charset=utf-8><title>label report</title><style>{CSS}</style></head>"
            f"<body><h1>Label: {stats.num_images} captioned images</h1>{notes_html}<table class=kv>{kv}</table>"
            f"<h2>Tag frequency</h2><div class=bars>{bars}</div>"
            f"<h2>Captions (winner highlighted among its candidates, CLIP image-text scores)</h2><div class=cards>{cards}</div>"
            f"<h2>Dropped by label ({len(dropped)})</h2>{drops or '<p class=meta>none</p>'}</body></html>\n")
