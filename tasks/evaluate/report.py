"""``report.html``: one self-contained page — verdict, the random-scorer warning, the scores
with their thresholds, every metric base vs LoRA, findings, the grid, per-prompt numbers and
the generated images nearest to a training image (the worst copies)."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

from PIL import Image

from lora_factory.report_decision import decision_section

from .._html import thumbnail_uri
from .metrics import WEIGHTS
from .report_sections import (
    best_checkpoint_section,
    efficiency_section,
    portability_section,
    progression_section,
)

STYLE = """body { font-family: system-ui, sans-serif; margin: 2em; }
table { border-collapse: collapse; margin-bottom: 1em; } td, th { border: 1px solid #ccc; padding: 4px 8px; }
img { image-rendering: pixelated; max-width: 100%; } .warn { background: #fff3cd; padding: .5em; }
.fail { color: #b00; } .pass { color: #070; } .skipped { color: #777; }"""


def _num(v: Any) -> str:
    return "n/a" if v is None else f"{v:+.4f}" if isinstance(v, float) and v < 0 else f"{v:.4f}"


def _png_b64(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _scores(r: dict[str, Any]) -> str:
    limits = {t["score"]: t for t in r["thresholds"]}
    rows = []
    for name, value in r["scores"].items():
        t = limits.get(name)
        rule = f"{t['op']} {t['threshold']}" if t else ""
        state = "" if not t else ('<span class="pass">pass</span>' if t["passed"] else '<span class="fail">fail</span>')
        rows.append(f"<tr><td>{html.escape(name)}</td><td>{_num(value)}</td><td>{WEIGHTS.get(name, '')}</td>"
                    f"<td>{rule}</td><td>{state}</td></tr>")
    return ("<table><tr><th>score</th><th>value</th><th>weight in overall</th><th>threshold</th><th></th></tr>"
            + "".join(rows) + "</table>")


def _metrics(r: dict[str, Any]) -> str:
    rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{_num(m['base'])}</td><td>{_num(m['lora'])}</td></tr>"
                   for k, m in r["metrics"].items())
    return f"<table><tr><th>metric</th><th>base</th><th>LoRA</th></tr>{rows}</table>"


def _findings(r: dict[str, Any]) -> str:
    if not r["findings"]:
        return "<p>No findings.</p>"
    items = "".join(f"<li><b>{html.escape(f['severity'])}</b> <code>{html.escape(f['code'])}</code>: "
                    f"{html.escape(f['message'])}</li>" for f in r["findings"])
    return f"<ul>{items}</ul>"


def _per_prompt(r: dict[str, Any]) -> str:
    names = [k for k in (r["per_prompt"][0] if r["per_prompt"] else {}) if isinstance(r["per_prompt"][0][k], dict)]
    head = "".join(f"<th>{html.escape(n)} base</th><th>{html.escape(n)} LoRA</th>" for n in names)
    rows = "".join(
        f"<tr><td>{p['index']}</td><td>{html.escape(p['kind'])}</td><td>{html.escape(p['text'])}</td>"
        + "".join(f"<td>{_num(p[n]['base'])}</td><td>{_num(p[n]['lora'])}</td>" for n in names) + "</tr>"
        for p in r["per_prompt"])
    return f"<table><tr><th>#</th><th>kind</th><th>prompt</th>{head}</tr>{rows}</table>"


def _copies(r: dict[str, Any], images_dir: Path, run_dir: Path | None) -> str:
    pairs = r.get("worst_copies", [])
    if not pairs:
        return "<p>No training images to compare with.</p>"
    rows = "".join(
        f"<tr><td><img alt='generated' src='{thumbnail_uri(images_dir / c['image'], 128)}'></td>"
        f"<td><img alt='training' src='{thumbnail_uri(Path(run_dir or '') / c['training_image'], 128)}'></td>"
        f"<td>{c['similarity']:.4f}</td><td>{html.escape(c['prompt'])}</td></tr>" for c in pairs)
    return f"<table><tr><th>LoRA image</th><th>nearest training image</th><th>cosine</th><th>prompt</th></tr>{rows}</table>"


def render_report(r: dict[str, Any], grid: Image.Image, images_dir: Path, run_dir: Path | None = None) -> str:
    """The page; ``run_dir`` resolves the run-relative paths of eval.json (sample grids)."""
    warn = ""
    if r["random_scorers"]:
        warn = ("<p class='warn'>The " + html.escape(", ".join(r["random_scorers"])) + " scorer is a random tiny "
                "model: the numbers it produces carry no meaning.</p>")
    verdict = f"<span class='{r['verdict']}'>{r['verdict']}</span>"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>LoRA evaluation</title><style>{STYLE}</style></head>
<body>
<h1>LoRA evaluation: {verdict}</h1>
{warn}
<p>Base <code>{html.escape(r["base_ref"])}</code>, LoRA <code>{html.escape(r["lora_path"])}</code>;
scorers {html.escape(", ".join(f"{k}={v}" for k, v in r["scorers"].items()))}. Seeds {r["seeds"]},
{r["steps"]} steps, guidance {r["guidance_scale"]}, {r["resolution"]} px, scheduler
{html.escape(r["scheduler"]["class"])}: identical for base and LoRA.</p>
<h2>Scores</h2>{_scores(r)}
<h2>Findings</h2>{_findings(r)}
<h2>Grid (per prompt: base | LoRA per seed)</h2>
<img alt="grid" src="data:image/png;base64,{_png_b64(grid)}">
<h2>Metrics, base vs LoRA</h2>{_metrics(r)}
<h2>Per prompt</h2>{_per_prompt(r)}
<h2>Nearest training images (worst copies)</h2>{_copies(r, images_dir, run_dir)}
<h2>Efficiency</h2>{efficiency_section(r)}
<h2>Portability (diffusers and kohya files)</h2>{portability_section(r)}
{best_checkpoint_section(r)}
<h2>Sample progression during training</h2>{progression_section(r, run_dir)}
{decision_section(None)}
</body></html>
"""
