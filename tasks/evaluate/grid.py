"""``grid.png``: one row per prompt; per seed, the base image next to the LoRA image.

Drawn with PIL only. Cells are at least ``MIN_CELL`` px (tiny-profile images are 64 px) and
scaled with NEAREST so no smoothing hides what the model drew.
"""

from __future__ import annotations

import textwrap
from typing import Any

from PIL import Image, ImageDraw, ImageFont

MIN_CELL = 128
LABEL_W = 168  # the prompt column
HEADER_H = 20  # "seed 1234 base | LoRA" above each column
LINE_H = 14
PAD = 4


def cell_size(image_side: int) -> int:
    return max(image_side, MIN_CELL)


def grid_size(n_prompts: int, n_seeds: int, image_side: int) -> tuple[int, int]:
    """(width, height) for ``n_prompts`` rows and ``n_seeds`` (base, LoRA) column pairs."""
    cell = cell_size(image_side)
    return LABEL_W + 2 * n_seeds * cell, HEADER_H + n_prompts * cell


def cell_origin(row: int, seed_index: int, side: str, image_side: int) -> tuple[int, int]:
    """Top-left corner of the cell for prompt ``row``, seed ``seed_index`` and ``side``."""
    cell = cell_size(image_side)
    col = 2 * seed_index + (1 if side == "lora" else 0)
    return LABEL_W + col * cell, HEADER_H + row * cell


def _font() -> Any:
    try:
        return ImageFont.load_default(size=11)
    except TypeError:  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _lines(text: str, max_lines: int, chars: int = 26) -> list[str]:
    lines = textwrap.wrap(text, chars) or [""]
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] = lines[-1][:-1] + "…"
    return lines


def make_grid(rows: list[str], seeds: list[int], images: dict[tuple[int, int, str], Image.Image]) -> Image.Image:
    """``images[(row, seed, side)]``: the image of prompt ``row`` with ``seed`` on ``side``."""
    side_px = next(iter(images.values())).width
    cell = cell_size(side_px)
    grid = Image.new("RGB", grid_size(len(rows), len(seeds), side_px), "white")
    draw, font = ImageDraw.Draw(grid), _font()
    for j, seed in enumerate(seeds):
        for side, label in (("base", "base"), ("lora", "LoRA")):
            x, _ = cell_origin(0, j, side, side_px)
            draw.text((x + PAD, PAD), f"seed {seed} {label}", fill="black", font=font)
    for r, text in enumerate(rows):
        for k, line in enumerate(_lines(text, cell // LINE_H - 1)):
            draw.text((PAD, HEADER_H + r * cell + PAD + k * LINE_H), line, fill="black", font=font)
        for j, seed in enumerate(seeds):
            for side in ("base", "lora"):
                im = images[(r, seed, side)]
                shown = im if im.size == (cell, cell) else im.resize((cell, cell), Image.Resampling.NEAREST)
                grid.paste(shown, cell_origin(r, j, side, side_px))
    return grid
