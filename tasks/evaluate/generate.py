"""Rendering: every (prompt, seed) pair in batches, the same way for base and LoRA.

Each image has its own ``torch.Generator`` seeded with its seed, so its starting noise does not
depend on the batch it lands in: base and LoRA (and a rerun with another batch size) draw the
same noise for the same (prompt, seed). The pipeline returns float arrays (``output_type="np"``)
so NaN outputs are seen before they become black PNGs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from .prompts import EvalPrompt

Job = tuple[int, str, int]  # (prompt index, prompt text, seed)


@dataclass(frozen=True)
class Sample:
    """One rendered image: which prompt, which seed, which side (base or LoRA)."""

    prompt_index: int
    seed: int
    side: str
    pixels: np.ndarray  # HxWx3 float in [0, 1] as the pipeline returned it (NaN kept)

    @property
    def image(self) -> Image.Image:
        clean = np.nan_to_num(self.pixels, nan=0.0, posinf=1.0, neginf=0.0)
        return Image.fromarray((np.clip(clean, 0, 1) * 255).round().astype(np.uint8), "RGB")

    @property
    def name(self) -> str:
        return f"{self.side}_p{self.prompt_index}_s{self.seed}.png"


def scheduler_of(pipe: Any) -> dict[str, Any]:
    """The scheduler's class and config: recorded per side to show both used the same."""
    return {"class": type(pipe.scheduler).__name__,
            "config": {k: v for k, v in dict(pipe.scheduler.config).items() if not k.startswith("_")}}


def render(pipe: Any, prompts: list[EvalPrompt], seeds: list[int], side: str, *, steps: int,
           guidance: float, resolution: int, batch_size: int, device: torch.device) -> list[Sample]:
    """Every prompt with every seed, ``batch_size`` images per pipeline call, in (prompt, seed) order."""
    return render_jobs(pipe, jobs_of(prompts, seeds), side, steps=steps, guidance=guidance, resolution=resolution,
                       batch_size=batch_size, device=device)


def jobs_of(prompts: list[EvalPrompt], seeds: list[int]) -> list[Job]:
    """Every (prompt index, prompt text, seed), in the order the images are rendered and stored."""
    return [(i, p.text, s) for i, p in enumerate(prompts) for s in seeds]


def render_jobs(pipe: Any, jobs: list[Job], side: str, *, steps: int, guidance: float, resolution: int,
                batch_size: int, device: torch.device) -> list[Sample]:
    """``jobs`` in order, ``batch_size`` images per pipeline call (a slice of them renders the same
    images as the whole list when it starts at a multiple of ``batch_size``)."""
    samples: list[Sample] = []
    for start in range(0, len(jobs), batch_size):
        batch = jobs[start:start + batch_size]
        generators = [torch.Generator(device).manual_seed(s) for _, _, s in batch]
        out = pipe([t for _, t, _ in batch], num_inference_steps=steps, guidance_scale=guidance,
                   height=resolution, width=resolution, generator=generators, output_type="np")
        for (i, _, s), pixels in zip(batch, np.asarray(out.images, dtype=np.float32), strict=True):
            samples.append(Sample(i, s, side, pixels))
    return samples
