"""Tune: pick the training config for this dataset (LoRATuner) and say why."""

from __future__ import annotations

from pathlib import Path

from lora_factory.catalog import LABEL_LABELS, TUNE_RATIONALE, TUNE_TRAIN_CONFIG
from lora_factory.config import FactoryConfig
from lora_factory.context import RunRef, run_stage
from training.tuner import DatasetStats, Recommendation, recommend

from ._prefect import stage_task

STAGE = "tune"


def dataset_stats(label_dir: Path) -> DatasetStats:
    labels = LABEL_LABELS.read(label_dir).to_pylist()
    words = [len(lab["caption"].split()) for lab in labels]
    return DatasetStats(num_images=len(labels), mean_caption_words=sum(words) / max(1, len(words)))


def run_tune(label_dir: Path, cfg: FactoryConfig, out: Path) -> tuple[Recommendation, DatasetStats]:
    """Write the chosen TrainConfig and its rationale."""
    stats = dataset_stats(label_dir)
    rec = recommend(cfg.tune.strategy, cfg.train, stats)
    TUNE_TRAIN_CONFIG.write(out, rec.config)
    TUNE_RATIONALE.write(out, rec.markdown(stats, cfg.tune.strategy))
    return rec, stats


@stage_task(STAGE)
def tune_task(ref: RunRef) -> dict[str, object]:
    with run_stage(ref, STAGE) as st:
        st.log_params({"strategy": st.config.tune.strategy})
        rec, stats = run_tune(st.input_dir(LABEL_LABELS), st.config, st.out)
        st.log_params({f"recommended.{k}": v for k, v in rec.config.model_dump().items()})
        st.log_metrics({"num_images": stats.num_images, "mean_caption_words": stats.mean_caption_words})
        st.log_artifact(st.output_path(TUNE_TRAIN_CONFIG))
        st.log_artifact(st.output_path(TUNE_RATIONALE))
    return rec.config.model_dump()
