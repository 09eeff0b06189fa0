"""Evaluate's throughput on the tiny pipeline; prints one JSON document.

- ``images_per_s``: base and LoRA images generated and scored per second (batched);
- ``batched_speedup``: generating every (prompt, seed) in batches of ``BATCH`` vs one image per
  pipeline call (same images: each has its own seeded generator);
- ``share_outside_generation``: of the evaluation's time, the part spent embedding and scoring
  (target <= 0.15). Loading the pipeline and the scorers is not counted.

The figures carry the load average: on a shared machine, read them with it.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lora_factory.config import EvaluateConfig  # noqa: E402
from lora_factory.models import load_pipeline  # noqa: E402
from tasks.evaluate.embedders import load_embedder  # noqa: E402
from tasks.evaluate.generate import render  # noqa: E402
from tasks.evaluate.prompts import EvalPrompt  # noqa: E402
from tasks.evaluate.score import EmbeddingSet, Scored, headline_scores, score_set  # noqa: E402

PROMPTS = [EvalPrompt("concept", f"lfstyle, a picture number {i}") for i in range(6)]
SEEDS = [1, 2]
BATCH = 6
STEPS = 4


def main() -> None:
    cache = Path(tempfile.mkdtemp(prefix="bench-evaluate-"))
    pipe = load_pipeline("tiny:sd", "sd15", cache)
    pipe.set_progress_bar_config(disable=True)
    kw = {"steps": STEPS, "guidance": 5.0, "resolution": 64, "device": torch.device("cpu")}
    render(pipe, PROMPTS[:1], SEEDS[:1], "warmup", batch_size=1, **kw)
    t0 = time.perf_counter()
    one = render(pipe, PROMPTS, SEEDS, "base", batch_size=1, **kw)
    t1 = time.perf_counter()
    batched = render(pipe, PROMPTS, SEEDS, "base", batch_size=BATCH, **kw)
    t2 = time.perf_counter()
    embedders = [load_embedder(n, "tiny:clip", cache) for n in ("pixels", "clip")]
    t3 = time.perf_counter()
    images = [s.image for s in batched]
    out = Scored()
    for e in embedders:
        emb = e.embed_images(images)
        text = e.embed_texts([PROMPTS[s.prompt_index].text for s in batched]) if e.embed_texts else None
        score_set(EmbeddingSet(e.name, emb, emb, emb[:4], text), ["concept"] * len(batched), EvaluateConfig(), out)
    headline_scores(out, "pixels")
    t4 = time.perf_counter()
    gen, scoring = t2 - t1, t4 - t3
    print(json.dumps({
        "images": len(one), "steps": STEPS, "batch": BATCH,
        "one_at_a_time_s": round(t1 - t0, 3), "batched_s": round(gen, 3),
        "batched_speedup": round((t1 - t0) / gen, 2),
        "images_per_s": round(len(batched) / (gen + scoring), 2),
        "scoring_s": round(scoring, 3), "share_outside_generation": round(scoring / (gen + scoring), 3),
        "target_share_outside_generation": 0.15, "load_average": os.getloadavg()[0],
    }, indent=2))


if __name__ == "__main__":
    main()
