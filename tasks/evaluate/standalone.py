"""Evaluating any LoRA file outside a factory run (``lora-factory evaluate``): ours, kohya-format
or diffusers-format from elsewhere. The prompts come from a file or the profile's templates
with the file's trigger word; training images, when given, are the fidelity reference."""

from __future__ import annotations

from pathlib import Path

from safetensors import SafetensorError, safe_open

from lora_factory.config import FactoryConfig
from lora_factory.errors import ConfigError
from lora_factory.home import home_of
from lora_factory.models.families import config_family
from lora_factory.schemas import EvalResult
from lora_factory.textfiles import read_user_text
from training.dataset import IMAGE_SUFFIXES

from .prompts import Concept, EvalPrompt, build_prompts
from .stage import EvalSetup, evaluate_lora

TRIGGER_KEYS = ("modelspec.trigger_phrase", "ss_output_name")


def file_metadata(path: Path) -> dict[str, str]:
    """The safetensors header's metadata; one line if the file is not a safetensors file."""
    if not path.is_file():
        raise ConfigError(f"LoRA file {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError) as e:
        raise ConfigError(f"{path} is not a LoRA: not a readable safetensors file ({str(e)[:120]})") from None


def read_prompts(path: Path) -> list[EvalPrompt]:
    """One prompt per line (``#`` comments and blank lines skipped); ``leakage: ...`` marks a
    class prompt without the trigger word."""
    lines = [line.strip() for line in read_user_text(path, "prompts file").splitlines()]
    prompts = []
    for line in lines:
        if not line or line.startswith("#"):
            continue
        kind, _, rest = line.partition(":")
        prompts.append(EvalPrompt("leakage", rest.strip()) if kind.strip() == "leakage" and rest.strip()
                       else EvalPrompt("concept", line))
    if not prompts:
        raise ConfigError(f"prompts file {path} has no prompts: write one prompt per line")
    return prompts


def reference_images(folder: Path | None) -> list[Path]:
    if folder is None:
        return []
    if not folder.is_dir():
        raise ConfigError(f"--references {folder} is not a folder of training images")
    found = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not found:
        raise ConfigError(f"--references {folder} has no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return found


def evaluate_file(lora_file: Path, cfg: FactoryConfig, out_dir: Path, prompts_file: Path | None = None,
                  references: Path | None = None, trigger: str | None = None) -> EvalResult:
    meta = file_metadata(lora_file)
    trigger = trigger or next((meta[k] for k in TRIGGER_KEYS if meta.get(k)), cfg.label.trigger_word)
    if prompts_file is not None:
        prompts = read_prompts(prompts_file)
    else:
        e = cfg.evaluate
        prompts = build_prompts(Concept(trigger, "the subject", meta.get("modelspec.description")),
                                e.prompts, e.generalisation_prompts, e.leakage_prompts, [])
    models_dir = home_of(cfg).models
    family = config_family(cfg.models.base, cfg.models.base_family, models_dir)
    setup = EvalSetup(cfg.models.base, family, cfg.models.clip_scorer, models_dir,
                      cfg.evaluate.resolution or cfg.train.resolution, trigger, reference_images(references),
                      scorer_refs={"dino": cfg.models.dino_scorer})
    return evaluate_lora(lora_file, prompts, cfg.evaluate, setup, out_dir)
