"""``tune/rationale.md``: each value with the rule, prior, past runs, pin or memory step behind
it, the memory estimate against the budget, and the past runs cited as evidence."""

from __future__ import annotations

from typing import Any

from lora_factory.config import TrainConfig

from .families import GIB
from .recommend import Recommendation

SOURCE_LABEL = {"prior": "community default", "rule": "statistics rule", "history": "past runs",
                "pinned": "your pin", "memory": "memory fit", "budget": "time budget", "profile": "profile",
                "suggestion": "last rejection"}


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list):
        return ", ".join(map(str, value)) or "(none)"
    return str(value)


def _dataset(rec: Recommendation) -> list[str]:
    stats = rec.request.stats
    rows = [("images", stats.num_images), ("caption coverage", f"{stats.caption_coverage:.0%}"),
            ("words per caption", f"{stats.words_mean:.1f}"), ("tags per caption", f"{stats.tags_per_caption:.1f}"),
            ("text diversity", stats.text_diversity), ("visual diversity", stats.visual_diversity),
            ("median short side", stats.short_side_median), ("not square", f"{stats.non_square_share:.0%}"),
            ("estimated domain", stats.domain)]
    lines = ["## Dataset", "", "| statistic | value |", "|---|---|"]
    lines += [f"| {name} | {_fmt(value)} |" for name, value in rows if value is not None]
    return lines + [""]


def _memory(rec: Recommendation) -> list[str]:
    budget = rec.request.gpu_gb
    head = (f"Estimated peak: **{rec.memory.gib():.2f} GiB** against a budget of {budget:g} GiB."
            if budget is not None else
            f"Estimated peak: **{rec.memory.gib():.2f} GiB** (no budget given: set tune.gpu_gb to fit a GPU).")
    lines = ["## Memory", "", head, "", "| part | GiB |", "|---|---|"]
    lines += [f"| {part} | {gib:.3f} |" for part, gib in rec.memory.table()]
    return lines + [""]


def _history(rec: Recommendation) -> list[str]:
    lines = ["## Past runs", ""]
    moved = rec.shift
    if moved is None:
        return lines + ["History off, or no past run of this family has an evaluation score yet: the prior stands.", ""]
    if not moved.evidence:
        return lines + [f"{moved.considered} scored past runs of {rec.request.family.name}; none had a similar "
                        "dataset: the prior stands.", ""]
    if moved.strength > 0:
        head = (f"{moved.considered} scored past runs; the nearest {len(moved.evidence)} moved rank, learning "
                f"rate and steps {moved.strength:.0%} of the way towards the best-scoring ones.")
    else:
        head = (f"{moved.considered} scored past runs; the {len(moved.evidence)} similar ones give no reason to "
                "change (a lone or tied run counts only with a positive score): the prior stands.")
    lines += [head, "",
              "| run | MLflow run | distance | overall score | rank | learning rate | steps | weight |",
              "|---|---|---|---|---|---|---|---|"]
    for e in moved.evidence:
        v = e.run.values
        lines.append(f"| {e.run.run_id} | {e.run.mlflow_run_id} | {e.distance:.2f} | {e.run.score:+.4f} | "
                     f"{v['rank']:g} | {v['learning_rate']:g} | {v['max_steps']:g} | {e.weight:.2f} |")
    return lines + [""]


def markdown(rec: Recommendation) -> str:
    row = rec.request.family
    lines = ["# Training config rationale", "",
             f"Strategy `{rec.strategy}`, model family `{row.name}` ({row.note}).",
             f"Task: {rec.task} ({rec.task_why})." if rec.task else "", ""]
    lines += _dataset(rec) + _memory(rec)
    if rec.strategy == "auto":
        lines += _history(rec)
    lines += ["## Settings", "", "| setting | value | source | why |", "|---|---|---|---|"]
    for key in TrainConfig.model_fields:
        choice = rec.choices[key]
        if choice.source != "profile":
            lines.append(f"| `{key}` | `{_fmt(choice.value)}` | {SOURCE_LABEL[choice.source]} | {choice.why} |")
    kept = [k for k, c in rec.choices.items() if c.source == "profile"]
    lines += ["", f"Kept from the profile: {', '.join(f'`{k}`' for k in kept)}." if kept else ""]
    lines += rec.notes
    return "\n".join(lines).rstrip() + "\n"


def headline(rec: Recommendation) -> str:
    """One line for logs: the main values and the memory estimate."""
    c = rec.config
    budget = f" of {rec.request.gpu_gb:g}" if rec.request.gpu_gb is not None else ""
    return (f"{rec.request.family.name}: rank {c.rank}, lr {c.learning_rate:g}, {c.max_steps} steps, batch "
            f"{c.batch_size}x{c.gradient_accumulation_steps}, {c.resolution} px, ~{rec.memory.total / GIB:.1f}{budget} GiB")
