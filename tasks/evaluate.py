"""Evaluate: does the LoRA move images towards the prompts? Base vs LoRA, same seeds.

Stage logic only (a plain function of paths and config); the Prefect task wraps it. Each prompt
is rendered twice with identical settings and seeds — once by the base pipeline, once after
``load_lora_weights`` — so the only difference between a pair is the adapter. CLIP-T (cosine of
the image and prompt embeddings from the CLIP scorer) is recorded per image, and the gate later
compares the LoRA mean with the base mean (``clip_t_delta``). CLIP-I and other metrics extend
``score_images``.

Outputs in ``out_dir``: ``eval.json``, ``grid.png`` (base row over LoRA row, one column per
prompt), ``report.html`` (self-contained) and ``images/{base,lora}_<i>.png``.
"""

from __future__ import annotations

import base64
import html
import io
import math
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from lora_factory.catalog import (
    EVAL_GRID,
    EVAL_IMAGES,
    EVAL_REPORT,
    EVAL_RESULT,
    TRAIN_LORA,
    TUNE_TRAIN_CONFIG,
)
from lora_factory.config import EvaluateConfig
from lora_factory.context import RunRef, run_stage
from lora_factory.errors import StageError
from lora_factory.home import home_of
from lora_factory.models.refs import is_random_ref
from lora_factory.schemas import EvalResult, Finding, MetricPair, ThresholdCheck
from training.lora import LORA_WEIGHT_NAME

from ._prefect import stage_task

STAGE = "evaluate"

MIN_CELL = 128  # tiny-profile images are 64 px: too small to see in a report
LABEL_W = 56  # the row-label column ("base" / "LoRA")
HEADER_LINES = 3  # prompt text lines above each column
LINE_H = 14
PAD = 4
HEADER_H = HEADER_LINES * LINE_H + 2 * PAD


def generate_images(pipe: Any, prompts: list[str], cfg: EvaluateConfig, resolution: int,
                    device: torch.device) -> list[Image.Image]:
    """One image per prompt; prompt ``i`` always uses seed ``cfg.seed + i`` so base and LoRA
    runs (and reruns) draw the same starting noise."""
    images = []
    for i, prompt in enumerate(prompts):
        generator = torch.Generator(device).manual_seed(cfg.seed + i)
        out = pipe(prompt, num_inference_steps=cfg.num_inference_steps,
                   guidance_scale=cfg.guidance_scale, height=resolution, width=resolution,
                   generator=generator, output_type="pil")
        images.append(out.images[0].convert("RGB"))
    return images


def score_images(scorer: Any, images: list[Image.Image], prompts: list[str]) -> list[float]:
    """CLIP-T per (image, prompt) pair: the diagonal of the scorer's image x text cosine matrix."""
    sims = scorer.cosine(scorer.embed_images(images), scorer.embed_texts(prompts))
    return [float(v) for v in np.diag(np.asarray(sims, dtype=np.float64))]


def _summary(scores: list[float]) -> dict[str, Any]:
    return {"clip_t": scores, "clip_t_mean": float(np.mean(scores))}


def cell_size(image_side: int) -> int:
    """Grid cell side: the image size, but at least ``MIN_CELL`` so tiny images are visible."""
    return max(image_side, MIN_CELL)


def grid_size(n_prompts: int, image_side: int) -> tuple[int, int]:
    """(width, height) of ``grid.png`` for ``n_prompts`` columns of ``image_side`` images."""
    cell = cell_size(image_side)
    return LABEL_W + n_prompts * cell, HEADER_H + 2 * cell


def _font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=11)
    except TypeError:  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _wrap(draw: ImageDraw.ImageDraw, text: str, font: Any, width: int) -> list[str]:
    """Prompt text in at most ``HEADER_LINES`` lines that fit ``width`` px, with an ellipsis."""
    chars = max(4, len(text))
    while chars > 4:
        lines = textwrap.wrap(text, chars) or [""]
        if all(draw.textlength(line, font=font) <= width for line in lines):
            break
        chars -= 1
    lines = textwrap.wrap(text, chars) or [""]
    if len(lines) > HEADER_LINES:
        lines = lines[:HEADER_LINES]
        lines[-1] = lines[-1][: max(0, len(lines[-1]) - 1)] + "…"
    return lines


def make_grid(base: list[Image.Image], lora: list[Image.Image], prompts: list[str]) -> Image.Image:
    """Base row on top, LoRA row below, prompts as column headers, drawn with PIL only."""
    side = base[0].width
    cell = cell_size(side)
    grid = Image.new("RGB", grid_size(len(prompts), side), "white")
    draw = ImageDraw.Draw(grid)
    font = _font()
    for col, prompt in enumerate(prompts):
        x = LABEL_W + col * cell
        for j, line in enumerate(_wrap(draw, prompt, font, cell - 2 * PAD)):
            draw.text((x + PAD, PAD + j * LINE_H), line, fill="black", font=font)
        for row, image in enumerate((base[col], lora[col])):
            # NEAREST keeps pixels honest: no smoothing that would hide what the model drew.
            shown = image if image.size == (cell, cell) else image.resize((cell, cell), Image.Resampling.NEAREST)
            grid.paste(shown, (x, HEADER_H + row * cell))
    for row, label in enumerate(("base", "LoRA")):
        draw.text((PAD, HEADER_H + row * cell + cell // 2 - LINE_H // 2), label, fill="black", font=font)
    return grid


def _png_b64(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def render_report(result: dict[str, Any], grid: Image.Image) -> str:
    """A one-file HTML page: the grid inline (base64 PNG) and the per-prompt scores."""
    rows = "\n".join(
        f"<tr><td>{i}</td><td>{html.escape(p)}</td><td>{b:.4f}</td><td>{lo:.4f}</td>"
        f"<td>{lo - b:+.4f}</td></tr>"
        for i, (p, b, lo) in enumerate(zip(result["prompts"], result["base"]["clip_t"],
                                           result["lora"]["clip_t"], strict=True))
    )
    b_mean, l_mean = result["base"]["clip_t_mean"], result["lora"]["clip_t_mean"]
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>LoRA evaluation</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; }}
table {{ border-collapse: collapse; }}
td, th {{ border: 1px solid #ccc; padding: 4px 8px; text-align: left; }}
img {{ image-rendering: pixelated; max-width: 100%; }}
</style></head>
<body>
<h1>LoRA evaluation</h1>
<p>Base <code>{html.escape(str(result.get("base_ref", "")))}</code>, CLIP scorer
<code>{html.escape(str(result.get("clip_ref", "")))}</code>; seed {result["seed"]},
{result["steps"]} steps, guidance {result.get("guidance_scale", "")},
{result.get("resolution", "")} px. Same seed per prompt for base and LoRA.</p>
<p>CLIP-T mean: base {b_mean:.4f}, LoRA {l_mean:.4f}, delta <b>{result["clip_t_delta"]:+.4f}</b></p>
<img alt="base (top) vs LoRA (bottom)" src="data:image/png;base64,{_png_b64(grid)}">
<h2>Per prompt</h2>
<table>
<tr><th>#</th><th>prompt</th><th>base CLIP-T</th><th>LoRA CLIP-T</th><th>delta</th></tr>
{rows}
<tr><th></th><th>mean</th><th>{b_mean:.4f}</th><th>{l_mean:.4f}</th><th>{l_mean - b_mean:+.4f}</th></tr>
</table>
</body></html>
"""


def evaluate_lora(
    base_ref: str,
    family: str,
    lora_dir: Path,
    prompts: list[str],
    cfg: EvaluateConfig,
    clip_ref: str,
    cache_dir: Path,
    out_dir: Path,
    resolution: int,
) -> dict[str, Any]:
    """Render ``prompts`` with the base pipeline and with the LoRA, score both with CLIP-T,
    and write ``eval.json``, ``grid.png``, ``report.html`` and the images to ``out_dir``."""
    from lora_factory.models import load_clip_scorer, load_pipeline
    from training.trainer import resolve_device

    if not prompts:
        raise StageError("evaluate has no prompts; set evaluate.prompts in the profile")
    lora_dir = Path(lora_dir)
    if not (lora_dir / LORA_WEIGHT_NAME).is_file():
        raise StageError(f"no LoRA weights at {lora_dir / LORA_WEIGHT_NAME}; run the train stage")
    out_dir = Path(out_dir)
    images_dir = EVAL_IMAGES.at(out_dir)
    images_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device("auto")

    pipe = load_pipeline(base_ref, family, cache_dir, device=str(device))
    pipe.set_progress_bar_config(disable=True)
    base_images = generate_images(pipe, prompts, cfg, resolution, device)
    pipe.load_lora_weights(str(lora_dir), weight_name=LORA_WEIGHT_NAME)
    lora_images = generate_images(pipe, prompts, cfg, resolution, device)
    del pipe
    for i, (b, lo) in enumerate(zip(base_images, lora_images, strict=True)):
        b.save(images_dir / f"base_{i}.png")
        lo.save(images_dir / f"lora_{i}.png")

    scorer = load_clip_scorer(clip_ref, cache_dir, device=str(device))
    base_scores = score_images(scorer, base_images, prompts)
    lora_scores = score_images(scorer, lora_images, prompts)
    if not all(math.isfinite(s) for s in base_scores + lora_scores):
        raise StageError("CLIP-T scores are not finite; the generated images or the scorer are broken")

    detail: dict[str, Any] = {
        "prompts": list(prompts),
        "base": _summary(base_scores),
        "lora": _summary(lora_scores),
        "seed": cfg.seed,
        "steps": cfg.num_inference_steps,
        "guidance_scale": cfg.guidance_scale,
        "resolution": resolution,
        "clip_ref": clip_ref,
    }
    clip_t = MetricPair(base=detail["base"]["clip_t_mean"], lora=detail["lora"]["clip_t_mean"])
    detail["clip_t_delta"] = clip_t.gain
    result = judge(
        EvalResult(base_ref=base_ref, family=family, lora_path=str(lora_dir), scorers={"clip": clip_ref},
                   random_scorers=["clip"] if is_random_ref(clip_ref) else [], metrics={"clip_t": clip_t},
                   scores={"adherence_delta": clip_t.gain, "overall_score": clip_t.lora}, verdict="fail",
                   **detail),
        cfg)

    grid = make_grid(base_images, lora_images, prompts)
    EVAL_GRID.write(out_dir, grid)
    EVAL_RESULT.write(out_dir, result)
    data = result.model_dump(mode="json")
    EVAL_REPORT.write(out_dir, render_report(data, grid))
    return data


def check_thresholds(scores: dict[str, float | None], cfg: EvaluateConfig) -> list[ThresholdCheck]:
    """Every configured threshold against its score; a score that was not measured fails."""
    checks = []
    for op, limits in ((">=", cfg.min_scores), ("<=", cfg.max_scores)):
        for name, limit in sorted(limits.items()):
            value = scores.get(name)
            ok = value is not None and math.isfinite(value) and (value >= limit if op == ">=" else value <= limit)
            checks.append(ThresholdCheck(score=name, op=op, threshold=limit, value=value, passed=ok))
    return checks


def judge(result: EvalResult, cfg: EvaluateConfig) -> EvalResult:
    """Apply the thresholds, name a random scorer, and set the verdict."""
    result.thresholds = check_thresholds(result.scores, cfg)
    if result.random_scorers:
        result.findings.append(Finding(
            code="random_scorer", severity="warning",
            message=f"the {', '.join(result.random_scorers)} scorer is a random tiny model: its scores carry no meaning",
            items=[result.scorers[r] for r in result.random_scorers if r in result.scorers]))
    ok = all(t.passed for t in result.thresholds) and not result.errors()
    result.verdict = "pass" if ok else "fail"
    return result


def prompts_for(templates: list[str], topics: list[str], trigger: str, max_topics: int = 4) -> list[str]:
    """Every template for each of the first ``max_topics`` topics, in a stable order."""
    return [t.format(topic=topic, trigger=trigger) for topic in topics[:max_topics] for t in templates]


@stage_task(STAGE)
def evaluate_task(ref: RunRef) -> dict[str, Any]:
    with run_stage(ref, STAGE) as st:
        cfg = st.config
        tcfg = st.read(TUNE_TRAIN_CONFIG)
        prompts = prompts_for(cfg.evaluate.prompts, ref.topics, cfg.label.trigger_word)
        resolution = cfg.evaluate.resolution or tcfg.resolution
        st.log_params({**cfg.evaluate.model_dump(), "resolved_prompts": prompts, "resolution": resolution,
                       "clip_scorer": cfg.models.clip_scorer})
        result = evaluate_lora(
            cfg.models.base, cfg.models.base_family, st.input_path(TRAIN_LORA), prompts, cfg.evaluate,
            cfg.models.clip_scorer, home_of(cfg).models, st.out, resolution,
        )
        st.log_metrics({"clip_t_base": result["base"]["clip_t_mean"],
                        "clip_t_lora": result["lora"]["clip_t_mean"],
                        "clip_t_delta": result["clip_t_delta"],
                        **{f"score_{k}": v for k, v in result["scores"].items() if v is not None}})
        for output in (EVAL_RESULT, EVAL_GRID, EVAL_REPORT):
            st.log_artifact(st.output_path(output))
    return {"clip_t_delta": result["clip_t_delta"]}
