"""Tune: pick the training config for this dataset (LoRATuner) and say why."""

from __future__ import annotations

from pathlib import Path

import yaml

from lora_factory.config import FactoryConfig, TrainConfig
from lora_factory.context import RunRef, run_stage
from lora_factory.manifest import read_table
from training.tuner import DatasetStats, Recommendation, recommend

from ._prefect import stage_task
from .label import LABELS_SCHEMA

STAGE = "tune"


def dataset_stats(label_dir: Path) -> DatasetStats:
    labels = read_table(label_dir / "labels.parquet", LABELS_SCHEMA).to_pylist()
    words = [len(lab["caption"].split()) for lab in labels]
    return DatasetStats(num_images=len(labels), mean_caption_words=sum(words) / max(1, len(words)))


def run_tune(label_dir: Path, cfg: FactoryConfig, out: Path) -> tuple[Recommendation, DatasetStats]:
    """Write ``train_config.yaml`` (a TrainConfig) and ``rationale.md``."""
    stats = dataset_stats(label_dir)
    rec = recommend(cfg.tune.strategy, cfg.train, stats)
    (out / "train_config.yaml").write_text(yaml.safe_dump(rec.config.model_dump(mode="json"), sort_keys=False))
    (out / "rationale.md").write_text(rec.markdown(stats, cfg.tune.strategy))
    return rec, stats


def load_train_config(tune_dir: Path) -> TrainConfig:
    """The TrainConfig the tune stage chose."""
    return TrainConfig.model_validate(yaml.safe_load((tune_dir / "train_config.yaml").read_text()))


@stage_task(STAGE)
def tune_task(ref: RunRef) -> dict[str, object]:
    with run_stage(ref, STAGE) as st:
        st.log_params({"strategy": st.config.tune.strategy})
        rec, stats = run_tune(st.input("label"), st.config, st.out)
        st.log_params({f"recommended.{k}": v for k, v in rec.config.model_dump().items()})
        st.log_metrics({"num_images": stats.num_images, "mean_caption_words": stats.mean_caption_words})
        st.log_artifact(st.out / "train_config.yaml")
        st.log_artifact(st.out / "rationale.md")
    return rec.config.model_dump()
