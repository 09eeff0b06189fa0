"""The adapter's model card: a Hugging Face ``README.md`` with YAML front matter."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from .families import family_for

GPU_TARGETS = """\
| model | resolution | batch | settings | target |
|---|---|---|---|---|
| SD1.5, LoRA rank 16 | 512 px | 1 | fp16, AdamW8bit | ≤ 0.18 s/step on one H100 |
| SDXL, LoRA rank 32 | 1024 px | 1 | bf16, gradient checkpointing, AdamW8bit | fits in 12 GB VRAM |
| Flux, LoRA rank 16 | 1024 px | 1 | bf16, gradient checkpointing, AdamW8bit, int8 base | under 24 GB (estimate 16.6 GiB) |
| Flux, LoRA rank 16 | 1024 px | 1 | bf16, gradient checkpointing, AdamW8bit, NF4 base | under 16 GB (estimate 10.9 GiB) |

Targets from other trainers' published figures and the tuner's estimates, not measurements.
"""


def render_model_card(
    *,
    base_ref: str,
    family: str,
    trigger_word: str | None,
    train_config: dict[str, Any],
    dataset: dict[str, Any],
    result: dict[str, Any],
    eval_scores: dict[str, float] | None = None,
    sample_grid: str | None = None,
    files: dict[str, str] | None = None,
    load_from: str | None = None,
) -> str:
    """``load_from``: what ``from_pretrained`` loads for ``base_ref`` (``models.refs.loadable_ref``:
    the hub id, or the local folder a ``tiny:`` or local model is in); default ``base_ref``."""
    front: dict[str, Any] = {
        "base_model": base_ref,
        "library_name": "diffusers",
        "pipeline_tag": "text-to-image",
        **family_for(family).hub_card.front_matter(),  # the family's tags and its hub base's licence
        "instance_prompt": trigger_word,
        "lora_factory": {"family": family, "train": train_config, "dataset": dataset, "result": result},
    }
    if eval_scores:
        front["model-index"] = _model_index(eval_scores)
    if sample_grid:
        front["widget"] = [{"text": trigger_word or "", "output": {"url": sample_grid}}]
    files = files or {}
    lines = [
        "---", yaml.safe_dump(front, sort_keys=False, allow_unicode=True).rstrip(), "---", "",
        f"# LoRA for `{base_ref}`", "",
        f"Trigger word: `{trigger_word}`" if trigger_word else "No trigger word.", "",
        "## Use it", "",
        "```python",
        "from diffusers import DiffusionPipeline",
        f'pipe = DiffusionPipeline.from_pretrained("{load_from or base_ref}")',
        f'pipe.load_lora_weights("<this folder>", weight_name="{files.get("diffusers", "")}")',
        "```", "",
    ]
    if base_ref.strip().startswith("tiny:"):
        lines += [f"`{base_ref}` is lora-factory's random-init test model: `from_pretrained` cannot read that "
                  "reference, so the snippet names the folder it was built into on the training machine. "
                  f'Elsewhere, `lora_factory.models.resolve_ref("{base_ref}", "base", CACHE_DIR)` builds the '
                  "same model (seeded) and returns its folder.", ""]
    if files.get("kohya"):
        lines += [f"A1111 / ComfyUI: copy `{files['kohya']}` into the LoRA folder.", ""]
    lines += ["## Training", "", "| setting | value |", "|---|---|"]
    lines += [f"| `{k}` | `{v}` |" for k, v in train_config.items()]
    lines += ["", "## Dataset", ""]
    lines += [f"- {k}: {v}" for k, v in dataset.items()]
    lines += ["", "## Result", ""]
    lines += [f"- {k}: {v}" for k, v in result.items()]
    lines += ["", "## Evaluation", ""]
    lines += _eval_lines(eval_scores)
    if sample_grid:
        lines += ["", "## Samples", "", f"![samples]({sample_grid})"]
    lines += ["", "## GPU targets", "", GPU_TARGETS]
    return "\n".join(lines)


def _model_index(eval_scores: dict[str, float]) -> list[dict[str, Any]]:
    return [{"name": "lora-factory adapter", "results": [{
        "task": {"type": "text-to-image"},
        "metrics": [{"type": k, "value": float(v)} for k, v in sorted(eval_scores.items())]}]}]


def _eval_lines(eval_scores: dict[str, float] | None, notes: list[str] | None = None) -> list[str]:
    if not eval_scores:
        return ["Not evaluated yet (the evaluate stage adds scores)."]
    return [f"- {k}: {v:.4f}" for k, v in sorted(eval_scores.items())] + [f"- {n}" for n in notes or []]


def with_eval_scores(card: str, eval_scores: dict[str, float], notes: list[str] | None = None) -> str:
    """The card with the evaluation's scores (front matter ``model-index`` and the Evaluation
    section) in place of "not evaluated yet"; the rest of the card unchanged."""
    _, head, body = card.split("---\n", 2)
    front = yaml.safe_load(head) or {}
    front["model-index"] = _model_index(eval_scores)
    before, sep, after = body.partition("## Evaluation\n")
    if sep:
        rest = after.split("\n## ", 1)
        tail = "\n## " + rest[1] if len(rest) > 1 else "\n"
        body = before + sep + "\n" + "\n".join(_eval_lines(eval_scores, notes)) + "\n" + tail
    return "---\n" + yaml.safe_dump(front, sort_keys=False, allow_unicode=True) + "---\n" + body


def read_front_matter(path: Path) -> dict[str, Any]:
    text = Path(path).read_text(encoding="utf-8")
    if not text.startswith("---\n"):
        raise ValueError(f"{path} has no YAML front matter")
    return yaml.safe_load(text.split("---\n", 2)[1])
