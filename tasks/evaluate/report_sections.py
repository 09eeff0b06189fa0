"""Report sections added after the first report: efficiency, reference scores (aesthetic) and
the training's sample progression. Separate from ``report`` so each stays one screen long."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from .._html import thumbnail_uri

MEMORY_KINDS = {"cuda_peak_allocated": "CUDA allocator peak (torch.cuda.max_memory_allocated)",
                "rss_peak_delta": "process resident-set peak above its size at the start (CPU)",
                "rss_peak_delta_unreset": "process resident-set peak (could not be reset: may predate the block) above its size at the start (CPU)"}


def _sec(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.4f}"


def efficiency_section(r: dict[str, Any]) -> str:
    eff = r.get("efficiency") or {}
    if not eff.get("modes"):
        return "<p>Not measured (evaluate.efficiency_images = 0).</p>"
    labels = {"base": "without LoRA", "lora": "LoRA loaded", "fused": "LoRA fused"}
    rows = "".join(
        f"<tr><td>{labels.get(m, html.escape(m))}</td><td colspan='5'>unavailable: {html.escape(rec['unavailable'])}</td></tr>"
        if "unavailable" in rec else
        f"<tr><td>{labels.get(m, html.escape(m))}</td><td>{rec['images']}</td><td>{_sec(rec['p50'])}</td>"
        f"<td>{_sec(rec['p95'])}</td><td>{_sec(rec['p99'])}</td><td>{rec['peak_memory_mib']:.1f}</td></tr>"
        for m, rec in eff["modes"].items())
    kind = MEMORY_KINDS.get(eff["memory_kind"], eff["memory_kind"])
    return (f"<p>Seconds per image, one image per call on <code>{html.escape(eff['device'])}</code>, "
            f"{len(eff['prompts'])} fixed prompt{'' if len(eff['prompts']) == 1 else 's'}, seed {eff['seed']}, after one uncounted warm-up. "
            f"Peak memory: {html.escape(kind)}.</p>"
            "<table><tr><th>mode</th><th>images</th><th>p50 s</th><th>p95 s</th><th>p99 s</th>"
            f"<th>peak MiB</th></tr>{rows}</table>")


def progression_section(r: dict[str, Any], run_dir: Path | None = None) -> str:
    """The trainer's sample grids (same prompts and noise every time), oldest first; paths
    relative to the run directory ``run_dir`` (eval.json's), or absolute."""
    grids = [Path(run_dir or "") / p for p in r.get("sample_progression") or []]
    if not grids:
        return "<p>No training samples (train.sample_every is off, or this LoRA was not trained here).</p>"
    cells = "".join(f"<figure style='display:inline-block;margin:4px'><img alt='{html.escape(p.stem)}' "
                    f"src='{thumbnail_uri(p, 512)}'><figcaption>{html.escape(p.stem)}</figcaption></figure>"
                    for p in grids if p.is_file())
    return f"<div>{cells}</div>"


def best_checkpoint_section(r: dict[str, Any]) -> str:
    """Every candidate's score and the one that became the run's LoRA; nothing when
    evaluate.best_of_last is off (the report stays as it was)."""
    best = r.get("best_checkpoint")
    if not best:
        return ""
    rows = "".join(f"<tr><td>{html.escape(c['name'])}</td><td>{c['score']:.4f}</td>"
                   f"<td>{'<b>chosen</b>' if c['name'] == best['chosen'] else ''}</td></tr>" for c in best["candidates"])
    return (f"<h2>Best checkpoint</h2><p>Mean {html.escape(best['embedding'])} fidelity to the training images on "
            f"{len(best['prompts'])} concept prompt(s), seeds {best['seeds']}; shipped: "
            f"<code>{html.escape(best['shipped'])}</code>.</p>"
            f"<table><tr><th>checkpoint</th><th>score</th><th></th></tr>{rows}</table>")


def portability_section(r: dict[str, Any]) -> str:
    """Per exported file: its modules, how many diffusers adapted after loading it, and its
    problem; then whether the files rendered alike. Why on the page: a file that loads "fine"
    while diffusers drops part of it is the failure users meet only later, in ComfyUI or A1111."""
    port = r.get("portability") or {}
    if not port.get("files"):
        return "<p>Not checked.</p>"

    def adapted(f: dict[str, Any]) -> str:
        return "not loaded" if f.get("applied") is None else f"{f['applied']} of {f['modules']}"

    rows = "".join(f"<tr><td><code>{html.escape(name)}</code></td><td>{f['modules']}</td><td>{adapted(f)}</td>"
                   f"<td class='{'pass' if f['ok'] else 'fail'}'>{'ok' if f['ok'] else 'not portable'}</td>"
                   f"<td>{html.escape(f['problem'])}</td></tr>" for name, f in port["files"].items())
    diff = port.get("max_pixel_difference")
    same = ("<p>The files' images were not compared (one file).</p>" if diff is None else
            f"<p>Largest pixel difference between the files' images (same prompt and seed): {diff:.3g} "
            f"(tolerance {port['tolerance']:.4f}).</p>")
    verdict = "pass" if port.get("passed") else "fail"
    return (f"<p class='{verdict}'>Portability: {'passed' if port.get('passed') else 'failed'}.</p>"
            "<table><tr><th>file</th><th>modules</th><th>adapted after loading</th><th></th><th>problem</th></tr>"
            f"{rows}</table>{same}")
