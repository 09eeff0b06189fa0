"""The doctor's HTML dashboard: one self-contained page (inline SVG, thumbnails as data URIs).

Radar chart of the four scores, the optional narrative (``doctor.narrative``), findings worst first with thumbnails of the files concerned and
the fix, a 2-D embedding map coloured by cluster with duplicate groups linked, and word/tag
frequency bars. No script, no network: it opens from disk or as an MLflow artefact.
"""

from __future__ import annotations

import html
import math
from pathlib import Path

from lora_factory.schemas import DOCTOR_SCORES, DoctorReport

from .thumbs import thumbnail_uri

_PALETTE = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#9c755f")
_SEV = {"error": "#c0392b", "warning": "#d68910", "info": "#2874a6"}
_CSS = """body{font:14px system-ui,sans-serif;margin:24px;max-width:1100px;color:#222}
h1{font-size:22px}h2{font-size:17px;margin-top:28px}.note{background:#fdecea;padding:8px 12px;border-radius:4px}
.f{border-left:4px solid #ccc;padding:4px 12px;margin:12px 0}.f img{margin:2px;border:1px solid #ddd}
.fix{color:#1e6b35}.row{display:flex;gap:32px;flex-wrap:wrap}table{border-collapse:collapse}
td,th{padding:2px 8px;text-align:left}"""


def _esc(x: object) -> str:
    return html.escape(str(x))


def radar(report: DoctorReport, size: int = 260) -> str:
    c, r = size / 2, size / 2 - 40
    pts, axes, labels = [], [], []
    for k, name in enumerate(DOCTOR_SCORES):
        a = -math.pi / 2 + k * 2 * math.pi / len(DOCTOR_SCORES)
        v = report.scores[name].value / 10
        pts.append(f"{c + r * v * math.cos(a):.1f},{c + r * v * math.sin(a):.1f}")
        axes.append(f'<line x1="{c}" y1="{c}" x2="{c + r * math.cos(a):.1f}" y2="{c + r * math.sin(a):.1f}" stroke="#bbb"/>')
        lx, ly = c + (r + 22) * math.cos(a), c + (r + 14) * math.sin(a)
        labels.append(f'<text x="{lx:.1f}" y="{ly:.1f}" text-anchor="middle" font-size="12">{name} {report.scores[name].value:.1f}</text>')
    rings = "".join(f'<circle cx="{c}" cy="{c}" r="{r * f:.1f}" fill="none" stroke="#eee"/>' for f in (0.25, 0.5, 0.75, 1))
    return (f'<svg width="{size + 120}" height="{size}" viewBox="-60 0 {size + 120} {size}" role="img" '
            f'aria-label="scores">{rings}{"".join(axes)}'
            f'<polygon points="{" ".join(pts)}" fill="#4e79a766" stroke="#4e79a7"/>{"".join(labels)}</svg>')


def embedding_map(report: DoctorReport, size: int = 420) -> str:
    pad = 12
    pos = {im.file: (pad + im.x * (size - 2 * pad), pad + (1 - im.y) * (size - 2 * pad)) for im in report.images if im.ok}
    lines = []
    for group in report.duplicate_groups:
        if group[0] in pos:
            x0, y0 = pos[group[0]]
            lines += [f'<line x1="{x0:.1f}" y1="{y0:.1f}" x2="{pos[g][0]:.1f}" y2="{pos[g][1]:.1f}" stroke="#e15759"/>'
                      for g in group[1:] if g in pos]
    dots = []
    for im in report.images:
        if im.file in pos:
            x, y = pos[im.file]
            edge = ' stroke="#000" stroke-width="1.5"' if im.flags else ""
            dots.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="5" fill="{_PALETTE[im.cluster % len(_PALETTE)]}"{edge}>'
                        f'<title>{_esc(im.file)} (cluster {im.cluster}) {_esc(", ".join(im.flags))}</title></circle>')
    return (f'<svg width="{size}" height="{size}" style="border:1px solid #ddd" role="img" aria-label="embedding map">'
            f'{"".join(lines)}{"".join(dots)}</svg>')


def frequency_bars(freq: dict[str, int], width: int = 420) -> str:
    if not freq:
        return "<p>No captions.</p>"
    top = max(freq.values())
    rows = []
    for k, (word, n) in enumerate(freq.items()):
        w = (width - 170) * n / top
        rows.append(f'<text x="0" y="{k * 18 + 13}" font-size="12">{_esc(word[:24])}</text>'
                    f'<rect x="160" y="{k * 18 + 3}" width="{w:.1f}" height="13" fill="#76b7b2"/>'
                    f'<text x="{165 + w:.1f}" y="{k * 18 + 13}" font-size="11">{n}</text>')
    return f'<svg width="{width}" height="{len(freq) * 18 + 4}" role="img" aria-label="word frequency">{"".join(rows)}</svg>'


def _findings(report: DoctorReport, root: Path, thumbs: int) -> str:
    out = []
    for f in report.findings:
        pics = "".join(f'<img src="{uri}" title="{_esc(r)}" alt="{_esc(r)}">'
                       for r in f.files[:thumbs] if (uri := thumbnail_uri(root / r, 72)))
        names = ", ".join(_esc(r) for r in f.files[:20]) + (f" … and {len(f.files) - 20} more" if len(f.files) > 20 else "")
        out.append(f'<div class="f" style="border-color:{_SEV[f.severity]}"><b>{_esc(f.severity)}: {_esc(f.title)}</b>'
                   f'<div class="fix">Fix: {_esc(f.fix)}</div><div>{pics}</div><small>{names}</small></div>')
    return "".join(out) or "<p>No findings.</p>"


def render_dashboard(report: DoctorReport, root: Path, thumbs: int = 12) -> str:
    """The page for ``report`` of the dataset unpacked at ``root`` (thumbnails read from there)."""
    note = f'<p class="note">{_esc(report.note)}</p>' if report.note else ""
    if report.narrative:
        note += (f'<h2>Summary</h2><p class="narr">{_esc(report.narrative)}</p>'
                 "<p><small>Written by the LLM endpoint from the findings below (doctor.narrative); "
                 "the findings are the reference.</small></p>")
    counts = "".join(f"<tr><th>{_esc(k)}</th><td>{v}</td></tr>" for k, v in report.counts.items())
    formulas = "".join(f"<tr><th>{k}</th><td>{s.value:.1f}</td><td><code>{_esc(s.formula)}</code></td></tr>"
                       for k, s in report.scores.items())
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>Dataset doctor: {_esc(report.concept)}</title>"
            f"<style>{_CSS}</style></head><body><h1>Dataset doctor: {_esc(report.concept)}</h1>"
            f"<p>{_esc(report.source)} ({_esc(report.layout)}), CLIP {_esc(report.clip_model)}, "
            f"trigger {_esc(report.trigger_word or '-')}, schema v{report.schema_version}</p>{note}"
            f'<div class="row">{radar(report)}<table>{counts}</table></div><table>{formulas}</table>'
            f"<h2>Findings, worst first</h2>{_findings(report, root, thumbs)}"
            f'<div class="row"><div><h2>Embedding map (clusters; red lines link duplicates)</h2>{embedding_map(report)}</div>'
            f"<div><h2>Caption words and tags</h2>{frequency_bars(report.word_frequency)}</div></div></body></html>")
