"""Saving a finished run: the diffusers file, the kohya file, ``training_args.json``, a final
sample grid and the model card, all in the adapter folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from lora_factory.models.refs import loadable_ref

from .export_kohya import KOHYA_WEIGHT_NAME, modelspec_metadata, save_kohya, stamp_metadata
from .families import ModelFamily
from .job import TrainJob, TrainResult
from .lora import LORA_WEIGHT_NAME, lora_state, save_lora
from .model_card import render_model_card
from .samples import render_samples
from .setup import TrainData

TRAINING_ARGS_NAME = "training_args.json"
MODEL_CARD_NAME = "README.md"
SAMPLE_GRID_NAME = "samples.png"


def write_training_args(out_dir: Path, args: dict[str, Any]) -> None:
    import diffusers
    import peft

    args = {**args, "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__,
                                 "peft": peft.__version__}}
    (out_dir / TRAINING_ARGS_NAME).write_text(json.dumps(args, indent=2, default=str) + "\n")


def save_adapter(pipe: Any, family: ModelFamily, job: TrainJob, data: TrainData, result: TrainResult, device: torch.device,
                 world_size: int, sample_prompt: dict[str, Any]) -> None:
    """Write the adapter folder: the weights in both formats, the run's facts
    (``training_args.json``, also the kohya file's metadata), a sample grid and the model card."""
    cfg, out_dir = job.train, job.out_dir
    info = {"base_ref": job.base_ref, "family": job.family, "dataset_dir": str(job.dataset_dir),
            "seed": job.seed, "num_images": len(data.train),
            "num_validation_images": len(data.validation or []), "device": str(device),
            "steps": result.steps, "final_loss": result.final_loss, "resolution": cfg.resolution,
            "losses": [round(v, 6) for v in result.losses],  # evaluate flags a loss that never moved
            "learning_rate": cfg.learning_rate, "dataset_hash": data.dataset_hash,
            "resumed_from": result.resumed_from, "stopped_early": result.stopped_early,
            "best_step": result.best_step, "val_loss": result.val_loss, "buckets": result.buckets,
            "cache": result.cache, "world_size": world_size, "train": cfg.model_dump()}
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp_metadata(save_lora(pipe, out_dir), modelspec_metadata(family, info))
    files = {"diffusers": LORA_WEIGHT_NAME}
    if cfg.export_kohya:
        peft_state = {f"{component}.{k}": v for component, state_dict in lora_state(pipe).items()
                      for k, v in state_dict.items()}
        save_kohya(peft_state, out_dir / KOHYA_WEIGHT_NAME, family, cfg.rank, cfg.alpha or cfg.rank, info)
        files["kohya"] = KOHYA_WEIGHT_NAME
    write_training_args(out_dir, info)
    grid_name = None
    if cfg.sample_every:
        render_samples(pipe, sample_prompt, cfg.sample_seed, cfg.sample_steps, cfg.resolution, device,
                       out_dir / SAMPLE_GRID_NAME, **family.inference_kwargs(pipe))
        grid_name = SAMPLE_GRID_NAME
    card = job.card
    (out_dir / MODEL_CARD_NAME).write_text(render_model_card(
        base_ref=job.base_ref, family=job.family, trigger_word=card.trigger_word,
        train_config=cfg.model_dump(),
        dataset={"images": len(data.records), "train_images": len(data.train),
                 "validation_images": len(data.validation or []), "dataset_hash": data.dataset_hash,
                 "buckets": result.buckets, **card.dataset},
        result={"steps": result.steps, "final_loss": round(result.final_loss, 6),
                "val_loss": None if result.val_loss is None else round(result.val_loss, 6),
                "stopped_early": result.stopped_early, "seed": job.seed},
        eval_scores=card.eval_scores, sample_grid=grid_name, files=files,
        load_from=loadable_ref(job.base_ref, job.cache_dir)), encoding="utf-8")
