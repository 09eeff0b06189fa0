"""The factory's dataset gate: does a doctor report meet the configured minimums?

A pure decision, like ``deploy.gate``: the train stage calls it on ``label/doctor.json`` before
any step, and stops with the first failed minimum and the report's path.

Buckets against the batch size are checked here, not in label: the batch size is the tuner's
(``tune/train_config.yaml``, chosen after label wrote the report), so ``for_training`` redoes that
one check on the report's image sizes with the training config the trainer will get.
"""

from __future__ import annotations

from lora_factory.buckets import bucket_grid
from lora_factory.config import DoctorConfig, TrainConfig
from lora_factory.errors import StageError
from lora_factory.schemas import DOCTOR_SCORES, DoctorReport

from .facts import DEFAULT_BUCKET_STEP, bucket_names
from .findings import thin_buckets, worst_first

SMALL_BUCKET = "small_bucket"


def for_training(report: DoctorReport, train: TrainConfig) -> DoctorReport:
    """``report`` with its small_bucket finding (and the files' flags) for ``train``'s buckets,
    batch size and repeats. A bucket grid the config cannot build is left to the trainer's error."""
    sizes = [(im.width, im.height) if im.ok and im.width and im.height else None for im in report.images]
    if not train.aspect_buckets:  # centre squares: one bucket
        names: list[str | None] = [f"{train.resolution}x{train.resolution}" if s else None for s in sizes]
    else:
        try:
            grid = bucket_grid(train.resolution, train.bucket_step or DEFAULT_BUCKET_STEP,
                               train.min_bucket_side, train.max_bucket_side)
        except StageError:
            names = [None] * len(sizes)
        else:
            names = bucket_names(sizes, grid)
    found = thin_buckets([(im.file, b, train.repeats) for im, b in zip(report.images, names, strict=True)],
                         train.batch_size)
    thin = set(found.files) if found else set()
    images = [im.model_copy(update={"flags": [f for f in im.flags if f != SMALL_BUCKET]
                                    + ([SMALL_BUCKET] if im.file in thin else [])}) for im in report.images]
    kept = [f for f in report.findings if f.code != SMALL_BUCKET]
    return report.model_copy(update={"images": images, "findings": worst_first(kept + ([found] if found else []))})


def failed_minimums(report: DoctorReport, cfg: DoctorConfig) -> list[str]:
    """One phrase per minimum the report misses, in the order they are configured."""
    out = []
    usable = report.counts.get("decodable", 0)
    if cfg.min_images is not None and usable < cfg.min_images:
        out.append(f"{usable} usable images < doctor.min_images={cfg.min_images}")
    for name in DOCTOR_SCORES:
        limit = getattr(cfg, f"min_{name}")
        if limit is not None and report.scores[name].value < limit:
            out.append(f"{name} score {report.scores[name].value:.1f} < doctor.min_{name}={limit}")
    errors = sum(f.severity == "error" for f in report.findings)
    if cfg.max_errors is not None and errors > cfg.max_errors:
        worst = next(f.title for f in report.findings if f.severity == "error")
        out.append(f"{errors} error findings (first: {worst}) > doctor.max_errors={cfg.max_errors}")
    return out


def gate_message(report: DoctorReport, cfg: DoctorConfig, report_path: str) -> str | None:
    """The one line that stops a run, or None when the dataset passes."""
    failed = failed_minimums(report, cfg)
    if not failed:
        return None
    more = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
    return f"dataset doctor: {failed[0]}{more}; report: {report_path}"
