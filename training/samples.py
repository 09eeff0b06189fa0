"""Sample images from fixed prompts and seeds, as one grid image per step."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from PIL import Image


def image_grid(images: list[Image.Image], cols: int) -> Image.Image:
    w, h = images[0].size
    rows = (len(images) + cols - 1) // cols
    grid = Image.new("RGB", (cols * w, rows * h), (0, 0, 0))
    for i, im in enumerate(images):
        grid.paste(im, ((i % cols) * w, (i // cols) * h))
    return grid


def render_samples(pipe: Any, prompt_args: dict[str, Any], seed: int, steps: int, resolution: int,
                   device: torch.device, path: Path, **call_kwargs: Any) -> Path:
    """One image per prompt, prompt ``i`` from seed ``seed + i``, so every grid of a run shows
    the same noise and only the adapter changes. The caller's random state is left alone and the
    denoiser's train/eval mode restored. ``prompt_args``: ``{"prompt": [...]}`` or the prompts'
    embeddings (``Conditioner.pipeline_prompt``); ``call_kwargs``: the family's extra arguments."""
    from .families import denoiser_of

    denoiser = denoiser_of(pipe)
    was_training = denoiser.training
    denoiser.eval()
    pipe.set_progress_bar_config(disable=True)
    try:
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            count = len(prompt_args["prompt"]) if "prompt" in prompt_args else len(prompt_args["prompt_embeds"])
            gens = [torch.Generator(device).manual_seed(seed + i) for i in range(count)]
            images = pipe(**prompt_args, num_inference_steps=steps, generator=gens, height=resolution,
                          width=resolution, output_type="pil", **call_kwargs).images
    finally:
        denoiser.train(was_training)
    path.parent.mkdir(parents=True, exist_ok=True)
    image_grid(images, cols=min(4, len(images))).save(path)
    return path
