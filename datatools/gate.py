"""The factory's dataset gate: does a doctor report meet the configured minimums?

A pure decision, like ``deploy.gate``: the train stage calls it on ``label/doctor.json`` before
any step, and stops with the first failed minimum and the report's path.
"""

from __future__ import annotations

from lora_factory.config import DoctorConfig
from lora_factory.schemas import DOCTOR_SCORES, DoctorReport


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
