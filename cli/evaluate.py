"""``evaluate LORA_FILE --base REF``: evaluate any LoRA file against a base model, outside a run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lora_factory.catalog import EVAL_REPORT
from lora_factory.errors import FactoryError

from .common import HomeOpt, ProfileOpt, SetOpt, fail, overrides, runtime_defaults

LoraArg = Annotated[Path, typer.Argument(help="A LoRA .safetensors file (diffusers or kohya format).")]
BaseOpt = Annotated[str, typer.Option("--base", help="Base model reference: hub id, local folder or tiny:<name>.")]
FamilyOpt = Annotated[str | None, typer.Option(
    "--family", help="sd15, sdxl or flux (default: read from the base's model_index.json).")]
PromptsOpt = Annotated[Path | None, typer.Option("--prompts", help="Prompts, one per line ('leakage: ...' for class prompts).")]
RefsOpt = Annotated[Path | None, typer.Option("--references", help="Folder of training images (fidelity, copies).")]
TriggerOpt = Annotated[str | None, typer.Option("--trigger", help="Trigger word (default: from the file's metadata).")]
OutOpt = Annotated[Path | None, typer.Option("--out", help="Output folder (default: ./evaluate-<file name>).")]


def evaluate(
    lora_file: LoraArg,
    base: BaseOpt,
    family: FamilyOpt = None,
    prompts: PromptsOpt = None,
    references: RefsOpt = None,
    trigger: TriggerOpt = None,
    out: OutOpt = None,
    profile: ProfileOpt = "tiny",
    sets: SetOpt = None,
    home: HomeOpt = None,
) -> None:
    """Base vs LoRA on the same prompts and seeds: scores, findings, grid and report."""
    runtime_defaults()
    try:
        from lora_factory.profiles import load_config
        from tasks.evaluate.standalone import evaluate_file

        # the profile's family belongs to its own base model: --base's is read from its model_index.json
        ov = {"models.base_family": family, **overrides(sets, home=home), "models.base": base}
        if family is not None:
            ov["models.base_family"] = family
        cfg = load_config(profile, ov)
        out_dir = out or Path(f"evaluate-{lora_file.stem}")
        result = evaluate_file(lora_file, cfg, out_dir, prompts, references, trigger)
    except FactoryError as e:
        fail(e)
    typer.echo(f"verdict: {result.verdict}")
    for name, value in result.scores.items():
        typer.echo(f"  {name:16} {'n/a' if value is None else f'{value:.4f}'}")
    for f in result.findings:
        typer.echo(f"  {f.severity}: {f.code}: {f.message}")
    typer.echo(f"report: {EVAL_REPORT.at(out_dir)}")
