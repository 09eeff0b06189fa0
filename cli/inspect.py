"""``inspect``: the dataset doctor on any LoRA training folder or zip, outside the factory.

Reads kohya, imagefolder or flat folders (or a zip of one), writes ``doctor.json`` (versioned
schema) and ``doctor.html`` to ``--out``, prints the scores and the findings worst first, and with
``--fix OUT`` writes a cleaned copy and its change log; ``--narrative`` adds a paragraph on the
findings by the label stage's LLM endpoint. The input is only ever read.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Annotated, Any

import typer

from lora_factory.errors import ConfigError, FactoryError

from .common import HomeOpt, ProfileOpt, SetOpt, fail, overrides

PathArg = Annotated[Path | None, typer.Argument(help="A dataset folder (kohya, imagefolder with metadata.jsonl, flat) or a .zip.")]
ConceptOpt = Annotated[str | None, typer.Option("--concept", help="What the LoRA should learn, as a prompt ('a watercolour fox').")]
OutOpt = Annotated[Path, typer.Option("--out", help="Folder for doctor.json and doctor.html.")]
FixOpt = Annotated[Path | None, typer.Option("--fix", help="Write a cleaned copy here (a new folder), with fix_log.json in --out.")]
TriggerOpt = Annotated[str | None, typer.Option("--trigger", help="The trigger word captions must hold once.")]
NarrativeOpt = Annotated[bool, typer.Option("--narrative", help="Add a short paragraph on the findings, written by the label stage's LLM endpoint (label.llm; doctor.narrative).")]
SchemaOpt = Annotated[bool, typer.Option("--schema", help="Print the report's JSON schema and exit.")]


def inspect(
    path: PathArg = None,
    concept: ConceptOpt = None,
    out: OutOpt = Path("doctor-report"),
    fix: FixOpt = None,
    trigger: TriggerOpt = None,
    profile: ProfileOpt = "tiny",
    sets: SetOpt = None,
    home: HomeOpt = None,
    schema: SchemaOpt = False,
    narrative: NarrativeOpt = False,
) -> None:
    """Score a LoRA training folder (0-10 relevance, consistency, diversity, quality), list what is wrong
    and how to fix it; --fix OUT writes a cleaned copy."""
    try:
        if schema:
            from lora_factory.schemas import DoctorReport

            typer.echo(json.dumps(DoctorReport.model_json_schema(), indent=1))
            return
        if path is None or not (concept or "").strip():
            raise ConfigError("give a dataset and what it should teach: lora-factory inspect PATH --concept 'a watercolour fox'")
        ov = overrides(sets, home=home) | ({"doctor.narrative": True} if narrative else {})
        typer.echo(_inspect(path, concept or "", out, fix, trigger, profile, ov))
    except FactoryError as e:
        fail(e)


def _inspect(path: Path, concept: str, out: Path, fix: Path | None, trigger: str | None, profile: str,
             ov: dict[str, Any]) -> str:
    from datatools.captions import clip_budget
    from datatools.readers import read_dataset
    from lora_factory.profiles import load_config

    cfg = load_config(profile, ov)
    if fix is not None and path.is_dir():  # before the work; a zip's folder is checked once unpacked
        from datatools.fix import check_target

        check_target(path, fix)
    budget = clip_budget(cfg.doctor.max_tokens or cfg.label.max_tokens)
    with tempfile.TemporaryDirectory(prefix="lora-factory-inspect-") as scratch:
        ds = read_dataset(path, Path(scratch))
        report = _diagnose(ds, concept, cfg, trigger, budget)
        if cfg.doctor.narrative:
            report = _narrate(report, cfg)
        from datatools.doctor import write_report

        json_path, html_path = write_report(report, ds.root, out, cfg.doctor.thumbnails)
        lines = [_summary(report), f"report: {json_path}", f"dashboard: {html_path}"]
        if fix is not None:
            lines.append(_fix(ds, report, fix, out, budget, trigger))
    return "\n".join(lines)


def with_family_buckets(cfg: Any) -> Any:
    """``cfg`` with ``train.bucket_step`` set, when unset, to the step the tune stage picks for the
    base model's family (64 px for SD1.5, 16 for the tiny models), so the doctor checks the buckets
    training will use rather than SD1.5's grid. A family that cannot be told offline (a hub
    reference not in the cache and no ``models.base_family``) keeps the doctor's default."""
    if cfg.train.bucket_step is not None:
        return cfg
    from lora_factory.errors import ConfigError
    from training.tuner.families import family_for

    try:
        step = family_for(cfg.models.base_family, cfg.models.base).bucket_step
    except ConfigError:  # preflight names a bad base; the doctor itself needs no model
        return cfg
    return cfg.model_copy(update={"train": cfg.train.model_copy(update={"bucket_step": step})})


def _diagnose(ds: Any, concept: str, cfg: Any, trigger: str | None, budget: Any) -> Any:
    from tqdm import tqdm

    from datatools.cache import MeasureCache
    from datatools.doctor import diagnose, settings_for
    from lora_factory.home import home_of
    from lora_factory.models import load_clip_scorer

    home = home_of(cfg)
    scorer = load_clip_scorer(cfg.models.clip_scorer, home.models)
    cache = MeasureCache(home.doctor_cache, cfg.models.clip_scorer)
    with tqdm(total=len(ds.samples), desc="inspecting", unit="img", file=sys.stderr, leave=False) as bar:
        def progress(done: int, total: int) -> None:
            bar.update(done - bar.n)

        return diagnose(ds, concept, scorer, cfg.models.clip_scorer, budget, settings_for(with_family_buckets(cfg), trigger), cache, progress)


def _narrate(report: Any, cfg: Any) -> Any:
    from datatools.narrative import narrate
    from lora_factory.home import home_of

    return narrate(report, cfg.label.llm, home_of(cfg).llm_cache, lambda line: typer.echo(f"warning: {line}", err=True),
                   cfg.seed)


def _summary(report: Any) -> str:
    scores = "  ".join(f"{k} {s.value:.1f}" for k, s in report.scores.items())
    head = f"{report.counts['images']} images ({report.layout}), scores /10: {scores}"
    if report.note:
        head += f"\nnote: {report.note}"
    rows = [f"  {f.severity:7} {f.title}\n          fix: {f.fix}" for f in report.findings]
    if report.narrative:
        head += f"\nsummary: {report.narrative}"
    return "\n".join([head, f"{len(report.findings)} findings, worst first:" if rows else "no findings", *rows])


def _fix(ds: Any, report: Any, fix: Path, out: Path, budget: Any, trigger: str | None) -> str:
    from datatools.fix import write_fixed, write_log

    changes = write_fixed(ds, report, fix, budget, trigger)
    write_log(changes, out / "fix_log.json")
    return f"cleaned copy: {fix} ({len(changes)} changes, log: {out / 'fix_log.json'})"
