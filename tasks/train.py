"""Train: the Prefect task around ``training.trainer.train_lora``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lora_factory.context import RunRef, run_stage
from training.trainer import train_lora

from ._prefect import stage_task
from .tune import load_train_config

STAGE = "train"


@stage_task(STAGE)
def train_task(ref: RunRef) -> dict[str, Any]:
    with run_stage(ref, STAGE) as st:
        cfg = st.config
        tcfg = load_train_config(st.input("tune"))
        st.log_params({**tcfg.model_dump(), "base": cfg.models.base, "family": cfg.models.base_family})
        result = train_lora(
            cfg.models.base,
            cfg.models.base_family,
            st.input("label") / "dataset",
            tcfg,
            st.out / "lora",
            cache_dir=Path(cfg.home) / "models",
            seed=cfg.seed,
            on_step=lambda step, metrics: st.log_metrics(metrics, step=step),
        )
        st.log_metrics({"final_loss": result.final_loss, "steps": result.steps,
                        "train_seconds": result.seconds})
        st.log_artifacts(st.out / "lora", "lora")
    return {"steps": result.steps, "final_loss": result.final_loss}
