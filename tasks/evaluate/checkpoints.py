"""Best checkpoint: score the trainer's last K checkpoints the same way and keep the best.

Why: the last step is not always the best one (over-fitting, a late spike), and no trainer says
which checkpoint to ship. A checkpoint (``training.checkpoints``) stores the trainable
parameters under their PEFT module names; ``as_lora_file`` rewrites them in the layout of the
run's final diffusers file (same keys, same adapter metadata), so every checkpoint loads through
``load_lora_weights`` exactly like the final LoRA and they are compared on equal terms: the same
prompts, seeds and scheduler, scored by the mean fidelity of the primary embedding.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from lora_factory.errors import StageError
from training.checkpoints import WEIGHTS, list_weights

from .generate import Sample


@dataclass(frozen=True)
class CheckpointScore:
    name: str  # the checkpoint folder's name (step-000120)
    file: Path  # the checkpoint as a diffusers-format LoRA file
    score: float  # mean fidelity of its images to the reference images


def last_checkpoints(checkpoint_dir: Path, k: int) -> list[Path]:
    """The last ``k`` step checkpoints with weights, oldest first (none when ``k`` is 0): the
    trainer's complete ones or the weights the train stage published (``train/last_checkpoints``)."""
    return list_weights(checkpoint_dir)[-k:] if k > 0 else []


def _peft_keys(weights: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """``<component>.<module>.lora_A.<adapter>.weight`` -> per component, ``<module>.lora_A.weight``
    (the PEFT state dict ``training.lora.lora_state`` gives for a loaded adapter)."""
    by_component: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in weights.items():
        component, rest = key.split(".", 1)
        parts = rest.split(".")
        if len(parts) > 2 and parts[-3] in ("lora_A", "lora_B"):
            del parts[-2]  # the adapter name ("default")
        by_component.setdefault(component, {})[".".join(parts)] = value
    return by_component


def _diffusers_keys(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``<component>.<module>.lora_A.<adapter>.weight`` -> the diffusers file's key names."""
    from training.lora import diffusers_keys

    return {k: v for component, state in _peft_keys(weights).items()
            for k, v in diffusers_keys(component, state).items()}


def _kohya_keys(weights: dict[str, torch.Tensor], template: Path, family: str) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors under the kohya file's names (``ModelFamily.kohya_state``), with
    the template's alpha (the exporter writes one alpha for every module)."""
    from training.families import family_for

    with safe_open(str(template), framework="pt") as f:
        alpha_key = next((k for k in f.keys() if k.endswith(".alpha")), None)  # noqa: SIM118
        alpha = float(f.get_tensor(alpha_key)) if alpha_key else None
    if alpha is None:
        raise StageError(f"{template.name} has no alpha tensors: it is not a kohya file this factory wrote")
    peft = {f"{c}.{k}": v for c, state in _peft_keys(weights).items() for k, v in state.items()}
    return family_for(family).kohya_state(peft, alpha)


def as_lora_file(checkpoint: Path, template: Path, out: Path, kohya_family: str | None = None) -> Path:
    """Write ``checkpoint``'s weights as a LoRA file laid out like ``template`` (the run's final
    file: same keys, same metadata); a checkpoint of another adapter layout is a StageError.
    With ``kohya_family`` the template is the run's kohya file and the names are kohya's."""
    weights = load_file(str(Path(checkpoint) / WEIGHTS))
    converted = _diffusers_keys(weights) if kohya_family is None else _kohya_keys(weights, template, kohya_family)
    with safe_open(str(template), framework="pt") as f:
        keys, meta = set(f.keys()), dict(f.metadata() or {})
    if set(converted) != keys:
        missing = sorted(keys - set(converted))[:1] or sorted(set(converted) - keys)[:1]
        raise StageError(f"checkpoint {checkpoint.name} does not match {template.name} (first differing key: "
                         f"{missing[0]}); it was written by another training setup")
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().to("cpu", torch.float32).contiguous() if kohya_family else v.contiguous()
               for k, v in converted.items()}, str(out), metadata=meta)
    return out


Render = Callable[[Any], list[Sample]]  # pipeline with a LoRA loaded -> its images


def score_checkpoints(pipe: Any, files: dict[str, Path], render: Render,
                      score: Callable[[list[Sample]], float]) -> list[CheckpointScore]:
    """Load each file into ``pipe`` in turn, render the same images, score them, unload."""
    scores = []
    for name, file in files.items():
        pipe.load_lora_weights(str(file.parent), weight_name=file.name)
        scores.append(CheckpointScore(name, file, float(score(render(pipe)))))
        pipe.unload_lora_weights()
    return scores


def pick_best(scores: list[CheckpointScore]) -> CheckpointScore:
    """The highest score; on a tie the later checkpoint (it trained longer)."""
    if not scores:
        raise StageError("no checkpoint to choose from; set train.checkpoint_every or evaluate.best_of_last: 0")
    return max(reversed(scores), key=lambda s: s.score)


def fidelity_score(embed: Callable[[list[Any]], np.ndarray], reference: np.ndarray) -> Callable[[list[Sample]], float]:
    """Mean cosine of a checkpoint's images with the reference embeddings (rows L2-normalised)."""
    return lambda samples: float(np.mean(embed([s.image for s in samples]) @ reference.T))
