"""Best checkpoint in the evaluate stage: which of the trainer's last K checkpoints (and the final
LoRA) becomes the run's LoRA, and the adapter folder that ships it.

Why here: ``checkpoints`` scores and picks; this module gathers the candidates from the train
stage's outputs, scores them on a short prompt set (the first ``evaluate.best_of_prompts``
concept prompts, the evaluation's seeds, steps and scheduler) against the training images with
the first embedding of ``evaluate.embeddings``, and writes the winner as a copy of the train
stage's adapter folder with both weight files (diffusers and kohya) replaced, so every export
stays the same LoRA.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from lora_factory.config import EvaluateConfig
from lora_factory.errors import StageError
from training.export_kohya import KOHYA_WEIGHT_NAME
from training.lora import LORA_WEIGHT_NAME
from training.save import TRAINING_ARGS_NAME

from .checkpoints import (
    as_lora_file,
    fidelity_score,
    last_checkpoints,
    pick_best,
    score_checkpoints,
)
from .embedders import load_embedder
from .generate import render
from .prompts import EvalPrompt, seeds_for
from .stage import EvalSetup, open_pipeline

FINAL = "final"  # the candidate that is the train stage's own LoRA


@dataclass
class Choice:
    """The chosen candidate and every candidate's score (``best_checkpoint`` in eval.json)."""

    chosen: str
    scores: dict[str, float]
    prompts: list[str]
    seeds: list[int]
    embedding: str
    files: dict[str, Path] = field(default_factory=dict)  # candidate -> its diffusers-format file

    @property
    def replaced(self) -> bool:
        """A checkpoint before the final won: the run's LoRA is not train's."""
        return self.chosen != FINAL

    def record(self, shipped: str) -> dict[str, Any]:
        return {"chosen": self.chosen, "shipped": shipped, "embedding": self.embedding, "prompts": self.prompts,
                "seeds": self.seeds, "candidates": [{"name": n, "score": s} for n, s in self.scores.items()]}


def short_prompts(prompts: list[EvalPrompt], n: int) -> list[EvalPrompt]:
    """The first ``n`` concept prompts (the triggered ones if the run has no concept prompt)."""
    concept = [p for p in prompts if p.kind == "concept"] or [p for p in prompts if p.kind != "leakage"] or prompts
    return concept[:n]


def candidate_files(lora_dir: Path, checkpoint_dir: Path, k: int, work: Path) -> dict[str, Path]:
    """The last ``k`` published checkpoints as diffusers-format files, oldest first, then the final."""
    template = Path(lora_dir) / LORA_WEIGHT_NAME
    files = {p.name: as_lora_file(p, template, Path(work) / p.name / LORA_WEIGHT_NAME)
             for p in last_checkpoints(checkpoint_dir, k)}
    return files | {FINAL: template}


def choose(setup: EvalSetup, lora_dir: Path, checkpoint_dir: Path, prompts: list[EvalPrompt],
           cfg: EvaluateConfig, work: Path) -> Choice:
    """Score the candidates on the same images and pick the best (a tie goes to the later one)."""
    if not setup.references:
        raise StageError("evaluate.best_of_last needs the training images to score checkpoints against; "
                         "set evaluate.best_of_last: 0")
    files = candidate_files(lora_dir, checkpoint_dir, cfg.best_of_last, work)
    short = short_prompts(prompts, cfg.best_of_prompts)
    seeds = seeds_for(cfg.seed, cfg.num_seeds)
    embedder = load_embedder(cfg.embeddings[0], setup.clip_ref, setup.cache_dir, refs=setup.scorer_refs)
    reference = embedder.embed_images([Image.open(p).convert("RGB") for p in setup.references])
    pipe, kw = open_pipeline(setup, cfg)
    scores = score_checkpoints(pipe, files, lambda p: render(p, short, seeds, "checkpoint", **kw),
                               fidelity_score(embedder.embed_images, reference))
    return Choice(pick_best(scores).name, {s.name: s.score for s in scores}, [p.text for p in short], seeds,
                  embedder.name, files)


def write_chosen(choice: Choice, lora_dir: Path, checkpoint_dir: Path, family: str, dest: Path) -> Path:
    """``lora_dir``'s adapter folder with the chosen checkpoint's weights in both formats (the
    kohya file keeps its metadata; ``training_args.json`` names the checkpoint)."""
    lora_dir, dest = Path(lora_dir), Path(dest)
    shutil.copytree(lora_dir, dest, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns(LORA_WEIGHT_NAME, KOHYA_WEIGHT_NAME))
    shutil.copyfile(choice.files[choice.chosen], dest / LORA_WEIGHT_NAME)
    if (lora_dir / KOHYA_WEIGHT_NAME).is_file():
        as_lora_file(Path(checkpoint_dir) / choice.chosen, lora_dir / KOHYA_WEIGHT_NAME, dest / KOHYA_WEIGHT_NAME,
                     kohya_family=family)
    args = dest / TRAINING_ARGS_NAME
    if args.is_file():
        data = json.loads(args.read_text(encoding="utf-8"))
        data["chosen_checkpoint"] = choice.chosen
        args.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
    return dest
