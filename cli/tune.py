"""``tune``: show a run's training config and why (``tune RUN --explain``), or recommend one for a
dataset outside the factory (``tune --stats stats.json --gpu-gb 12 --family sdxl``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from lora_factory.errors import ConfigError, FactoryError

from .common import HomeOpt, SetOpt, StoreOpt, TrackingOpt, fail, overrides

RunArg = Annotated[str | None, typer.Argument(help="A run id: show its tune outputs.")]
ExplainOpt = Annotated[bool, typer.Option("--explain", help="Print the rationale: every value and why.")]
StatsOpt = Annotated[Path | None, typer.Option("--stats", help="curate's stats.json of a dataset (no run needed).")]
CaptionsOpt = Annotated[Path | None, typer.Option("--captions", help="label's caption_stats.json of that dataset.")]
GpuOpt = Annotated[float | None, typer.Option("--gpu-gb", help="GPU memory budget in GiB.")]
FamilyOpt = Annotated[str | None, typer.Option("--family", help="Model family: sd15, sdxl, tiny-sd15, tiny-sdxl.")]
HoursOpt = Annotated[float | None, typer.Option("--time-budget-h", help="Wall-clock budget of the training.")]
TaskOpt = Annotated[str | None, typer.Option("--task-type", help="subject, style or concept.")]
ProfileOpt = Annotated[str | None, typer.Option("--profile", "-p", help="Profile for the settings the tuner keeps.")]
HistoryOpt = Annotated[bool, typer.Option("--history/--no-history", help="Learn from past runs in the tracking store.")]
OutOpt = Annotated[Path | None, typer.Option("--out", help="Also write train_config.yaml and rationale.md here.")]


def tune(
    run_id: RunArg = None,
    explain: ExplainOpt = False,
    stats: StatsOpt = None,
    captions: CaptionsOpt = None,
    gpu_gb: GpuOpt = None,
    family: FamilyOpt = None,
    time_budget_h: HoursOpt = None,
    task_type: TaskOpt = None,
    profile: ProfileOpt = None,
    sets: SetOpt = None,
    history: HistoryOpt = True,
    out: OutOpt = None,
    store: StoreOpt = None,
    home: HomeOpt = None,
    tracking_uri: TrackingOpt = None,
) -> None:
    """The training config for a dataset, explained: a run's, or one for --stats outside the factory."""
    try:
        if run_id is not None:
            if stats is not None or captions is not None:
                raise ConfigError("give a run id or --stats, not both")
            typer.echo(_show_run(run_id, explain, overrides(store=store, home=home)), nl=False)
            return
        ov = overrides(sets, store, home, tracking_uri)
        for key, value in (("tune.gpu_gb", gpu_gb), ("tune.time_budget_h", time_budget_h),
                           ("tune.task_type", task_type)):
            if value is not None:
                ov[key] = value
        typer.echo(_recommend(stats, captions, family, profile, ov, history, explain, out), nl=False)
    except FactoryError as e:
        fail(e)


def _show_run(run_id: str, explain: bool, ov: dict[str, Any]) -> str:
    from lora_factory.catalog import TUNE_RATIONALE, TUNE_TRAIN_CONFIG
    from lora_factory.home import run_store_for
    from lora_factory.profiles import location_config
    from lora_factory.runstore import DONE

    run = run_store_for(location_config(ov)).open(run_id)
    status = run.stage_status("tune")
    if status != DONE:
        raise ConfigError(f"run {run_id} has no training config yet (stage tune is {status}): "
                          f"continue it with `lora-factory run --resume {run_id}`")
    folder = run.stage_path("tune")
    return TUNE_RATIONALE.read(folder) if explain else yaml.safe_dump(
        TUNE_TRAIN_CONFIG.read(folder).model_dump(mode="json"), sort_keys=False)


def _recommend(stats: Path | None, captions: Path | None, family: str | None, profile: str | None,
               ov: dict[str, Any], use_history: bool, explain: bool, out: Path | None) -> str:
    from lora_factory.catalog import TUNE_RATIONALE, TUNE_TRAIN_CONFIG
    from lora_factory.profiles import load_config, location_config
    from lora_factory.schemas import CaptionStats, CurateStats
    from training.tuner import (
        family_for,
        family_row,
        load_history,
        markdown,
        read_stats_file,
        recommend,
        request_for,
        stats_from,
    )

    if stats is None and captions is None:
        raise ConfigError("nothing to tune: give a run id, or a dataset's statistics with --stats FILE "
                          "(curate/stats.json) and/or --captions FILE (label/caption_stats.json)")
    cfg = load_config(profile, ov) if profile else location_config(ov)
    row = family_row(family) if family else family_for(cfg.models.base_family, cfg.models.base)
    curate = read_stats_file(stats, CurateStats, "curate statistics") if stats else None
    caption = read_stats_file(captions, CaptionStats, "caption statistics") if captions else None
    past = (load_history(cfg.tracking.uri, cfg.tracking.experiment, row.name)
            if use_history and cfg.tune.history else [])
    rec = recommend(request_for(cfg, stats_from(curate, caption), row, past), cfg.tune.strategy)
    if out is not None:
        TUNE_TRAIN_CONFIG.write(out, rec.config)
        TUNE_RATIONALE.write(out, markdown(rec))
    text = yaml.safe_dump(rec.config.model_dump(mode="json"), sort_keys=False)
    return text + ("\n" + markdown(rec) if explain else "")
