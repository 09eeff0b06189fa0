"""Train: the Prefect task around ``training.trainer.train_lora``.

Checkpoints go to the stage's scratch folder, which survives a failed attempt: a resumed run
continues from the latest one. The MLflow run of a failed attempt is reopened on resume, and a
``StepLedger`` (also in scratch) drops the steps the failed attempt had already logged, so every
metric's step axis has each step once and no gaps. With ``train.num_processes`` > 1 the task
starts that many data-parallel processes (torchrun) and forwards their metrics and sample grids
to MLflow while they run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from datatools.gate import SMALL_BUCKET, for_training, gate_message
from lora_factory.catalog import (
    LABEL_CAPTION_STATS,
    LABEL_DATASET,
    LABEL_DOCTOR,
    LABEL_DOCTOR_REPORT,
    TRAIN_CHECKPOINTS,
    TRAIN_LORA,
    TRAIN_SAMPLES,
    TUNE_TRAIN_CONFIG,
)
from lora_factory.config import TrainConfig
from lora_factory.context import RunRef, Stage, get_logger, run_stage
from lora_factory.errors import StageError
from lora_factory.home import home_of
from training.callbacks import Callback, StepLedger, TrainState
from training.checkpoints import publish_weights
from training.export_kohya import KOHYA_WEIGHT_NAME, dataset_metadata, stamp_metadata
from training.job import TrainJob, TrainResult
from training.launch import run_multiprocess
from training.trainer import train_lora

from ._prefect import stage_task

STAGE = "train"


class MlflowSamples(Callback):
    """Sample grids as step-indexed MLflow images (the UI shows them on a step slider)."""

    def __init__(self, st: Stage) -> None:
        self.st = st

    def on_sample(self, state: TrainState, path: Path) -> None:
        self.log(state.step, path)

    def log(self, step: int, path: Path) -> None:
        from PIL import Image

        with Image.open(path) as im:
            self.st.tracker.client.log_image(self.st.mlflow_run_id, im.copy(), key="samples", step=step)


def _train(st: Stage, tcfg: TrainConfig, ledger: StepLedger) -> TrainResult:
    """One process, or ``train.num_processes`` data-parallel ones; the same files either way.
    The trainer keeps at least the ``evaluate.best_of_last`` checkpoints evaluate chooses among."""
    cfg = st.config
    home = home_of(cfg)
    keep = max(tcfg.keep_checkpoints, cfg.evaluate.best_of_last)
    job = TrainJob(base_ref=cfg.models.base, family=cfg.models.base_family,
                   dataset_dir=st.input_path(LABEL_DATASET), train=tcfg.model_copy(update={"keep_checkpoints": keep}), out_dir=st.output_path(TRAIN_LORA),
                   cache_dir=home.models, seed=cfg.seed, checkpoint_dir=st.scratch / "checkpoints",
                   feature_cache_dir=home.train_cache, samples_dir=st.output_path(TRAIN_SAMPLES),
                   card={"trigger_word": cfg.label.trigger_word})
    samples = MlflowSamples(st)
    if tcfg.num_processes == 1:
        return train_lora(job, on_step=ledger, callbacks=[samples])
    return run_multiprocess(job, st.scratch / "multiprocess", on_step=ledger, on_sample=samples.log)


def stamp_dataset_metadata(st: Stage, tcfg: TrainConfig) -> None:
    """The label stage's trigger word, tag frequency and concept summary into the kohya file's
    metadata (``ss_tag_frequency``, ``modelspec.trigger_phrase``), so A1111 and ComfyUI show them."""
    kohya = st.output_path(TRAIN_LORA) / KOHYA_WEIGHT_NAME
    if kohya.is_file():
        stats = st.read(LABEL_CAPTION_STATS)
        stamp_metadata(kohya, dataset_metadata(stats.trigger_word, stats.tag_frequency, stats.num_images,
                                               tcfg.repeats, stats.concept_summary))


def dataset_gate(st: Stage, tcfg: TrainConfig) -> None:
    """Stop before any step when the doctor's report (label, ``doctor.enabled``) misses a
    configured minimum: one line naming it and the report. Buckets are judged against the
    tuner's batch size (``tcfg``), not the profile's; a thin bucket is a warning line."""
    if not LABEL_DOCTOR.exists(st.input_dir(LABEL_DOCTOR)):
        return
    where = f"{st.run.url}/{LABEL_DOCTOR_REPORT.run_path}"
    report = for_training(st.read(LABEL_DOCTOR), tcfg)
    for finding in report.findings:
        if finding.code == SMALL_BUCKET:
            get_logger().warning("dataset doctor: %s (tune/train_config.yaml); %s", finding.title, finding.fix)
            st.log_metrics({"doctor_small_bucket_images": finding.count})
    message = gate_message(report, st.config.doctor, where)
    if message:
        raise StageError(message)


def publish_checkpoints(st: Stage, tcfg: TrainConfig) -> None:
    """The last ``evaluate.best_of_last`` checkpoints' weights into ``train/last_checkpoints`` (the
    scratch folder is cleared when the stage is done); nothing when that setting is 0."""
    k = st.config.evaluate.best_of_last
    if k and not tcfg.checkpoint_every:
        get_logger().warning("evaluate.best_of_last is %d but train.checkpoint_every is 0: no checkpoints to choose "
                             "from, evaluate keeps the final LoRA; set train.checkpoint_every", k)
    published = publish_weights(st.scratch / "checkpoints", st.output_path(TRAIN_CHECKPOINTS), k) if k else []
    if k:
        st.log_metrics({"published_checkpoints": len(published)})


@stage_task(STAGE)
def train_task(ref: RunRef) -> dict[str, Any]:
    with run_stage(ref, STAGE) as st:
        cfg = st.config
        tcfg = st.read(TUNE_TRAIN_CONFIG)
        dataset_gate(st, tcfg)
        st.log_params({**tcfg.model_dump(), "base": cfg.models.base, "family": cfg.models.base_family})
        ledger = StepLedger(st.scratch / "logged_steps.json",
                            lambda step, metrics: st.log_metrics(metrics, step=step))
        result = _train(st, tcfg, ledger)
        stamp_dataset_metadata(st, tcfg)
        publish_checkpoints(st, tcfg)
        st.log_metrics({"final_loss": result.final_loss, "steps": result.steps,
                        "train_seconds": result.seconds,
                        "latent_cache_hits": result.cache["latents"]["hits"],
                        "latent_cache_misses": result.cache["latents"]["misses"]})
        for path in sorted(st.output_path(TRAIN_LORA).iterdir()):
            if path.is_file() and path.suffix != ".safetensors":  # weights: logged once, by deploy
                st.log_artifact(path, TRAIN_LORA.path)
    return {"steps": result.steps, "final_loss": result.final_loss,
            "resumed_from": result.resumed_from, "stopped_early": result.stopped_early}
