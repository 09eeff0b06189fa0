"""The child program of the SIGKILL-resume test (``python -m tests.resume_child``): resume-friendly
training whose on_step goes through a StepLedger into a JSONL file (like the train task into
MLflow), killing itself at a chosen step.

argv: dataset cache ckpt out log kill_at threads [reference_out]. With ``reference_out`` it then
trains the uninterrupted reference in the same process (same threads, same libraries) and prints
its per-step losses. ``RESUME_CHILD_BASE`` picks the base model (default ``tiny:sd``; its family
is then read from the model).
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import torch

from tests.training_helpers import small_cfg, tiny_job
from training.callbacks import StepLedger
from training.trainer import train_lora


def main(argv: list[str]) -> None:
    dataset, cache, ckpt_dir, out, log, kill_at, threads = argv[:7]
    torch.set_num_threads(int(threads))
    cfg = small_cfg(max_steps=8, batch_size=3, checkpoint_every=3, lr_scheduler="cosine", lr_warmup_steps=2,
                    random_flip=True, shuffle_tags=True, caption_dropout=0.2, repeats=2)

    def append(step: int, metrics: dict[str, float]) -> None:
        with open(log, "a") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")

    ledger = StepLedger(Path(ckpt_dir) / "ledger.json", append)
    base = os.environ.get("RESUME_CHILD_BASE")
    model = {"base_ref": base, "family": None} if base else {}

    def on_step(step: int, metrics: dict[str, float]) -> None:
        ledger(step, metrics)
        if step == int(kill_at):
            os.kill(os.getpid(), signal.SIGKILL)

    # The killed and the resumed run share a feature cache (cold, then half-filled); the reference
    # runs without one: equal weights prove neither the kill nor the cache changes the result.
    r = train_lora(tiny_job(Path(dataset), cfg, Path(out), Path(cache), seed=3, checkpoint_dir=Path(ckpt_dir),
                            feature_cache_dir=Path(ckpt_dir).parent / "features", **model), on_step=on_step)
    print(json.dumps({"resumed_from": r.resumed_from, "steps": r.steps}))
    if len(argv) > 7:
        ref: dict[int, float] = {}
        train_lora(tiny_job(Path(dataset), cfg, Path(argv[7]), Path(cache), seed=3, **model),
                   on_step=lambda s, m: ref.setdefault(s, m["loss"]))
        print(json.dumps(ref))


if __name__ == "__main__":
    main(sys.argv[1:])
