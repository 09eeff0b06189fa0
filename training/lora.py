"""The LoRA adapters: injecting them (the denoiser, optionally the text encoders), collecting their
trainable parameters under component-prefixed names, and saving the diffusers-format file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from lora_factory.config import TrainConfig
from lora_factory.errors import StageError

from .families import ModelFamily

LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
TEXT_ENCODERS = ("text_encoder", "text_encoder_2", "text_encoder_3")
DENOISERS = ("unet", "transformer")


def _lora_config(cfg: TrainConfig, targets: list[str]) -> Any:
    from peft import LoraConfig

    return LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha or cfg.rank, init_lora_weights="gaussian",
                      target_modules=list(targets))


def _inject(module: Any, lora_config: Any, seed: int, what: str, setting: str) -> None:
    """PEFT's gaussian init draws from torch's global generator, so the injection runs under a
    forked, seeded generator: reproducible, and the caller's random state is left alone.
    ``lora_B`` starts at zero, so the adapter starts as a no-op."""
    from diffusers.training_utils import cast_training_params

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            module.add_adapter(lora_config)
        except ValueError as e:  # PEFT: "Target modules {...} not found in the base model"
            raise StageError(f"{setting} {lora_config.target_modules} do not fit the {what}: {e}") from e
    cast_training_params(module, dtype=torch.float32)


def add_denoiser_lora(denoiser: torch.nn.Module, cfg: TrainConfig, seed: int,
                      default_targets: tuple[str, ...]) -> list[torch.nn.Parameter]:
    """Inject the denoiser's LoRA (``train.target_modules``, else the family's targets) and
    return its (trainable, fp32) parameters."""
    targets = cfg.target_modules if cfg.target_modules is not None else list(default_targets)
    _inject(denoiser, _lora_config(cfg, targets), seed, type(denoiser).__name__, "train.target_modules")
    return [p for p in denoiser.parameters() if p.requires_grad]


def add_loras(pipe: Any, cfg: TrainConfig, seed: int, family: ModelFamily) -> dict[str, torch.nn.Parameter]:
    """LoRAs on the denoiser and, with ``cfg.train_text_encoder``, on the family's adaptable text
    encoders; returns the trainable parameters by ``<component>.<name>`` (the names checkpoints
    store)."""
    add_denoiser_lora(getattr(pipe, family.denoiser), cfg, seed, family.default_targets)
    components = [family.denoiser]
    if cfg.train_text_encoder:
        trainable = [n for n in text_encoders(pipe) if n in family.text_encoder_loras]
        for offset, name in enumerate(trainable, start=1):
            _inject(getattr(pipe, name), _lora_config(cfg, cfg.text_encoder_target_modules),
                    seed + offset, name, "train.text_encoder_target_modules")
            components.append(name)
    return {f"{c}.{n}": p for c in components for n, p in getattr(pipe, c).named_parameters()
            if p.requires_grad}


def text_encoders(pipe: Any) -> list[str]:
    return [n for n in TEXT_ENCODERS if getattr(pipe, n, None) is not None]


def lora_state(pipe: Any) -> dict[str, dict[str, torch.Tensor]]:
    """Each adapted component's PEFT state dict (``lora_A`` / ``lora_B`` weights), by component."""
    from peft.utils import get_peft_model_state_dict

    out = {}
    for name in (*DENOISERS, *text_encoders(pipe)):
        module = getattr(pipe, name, None)
        if module is not None and getattr(module, "peft_config", None):
            out[name] = get_peft_model_state_dict(module)
    return out


# Older files (and diffusers' ``convert_state_dict_to_diffusers``) name some modules the legacy
# way; the PEFT name of each, key by key.
_LEGACY_SUFFIXES = {".lora.down.weight": ".lora_A.weight", ".lora.up.weight": ".lora_B.weight",
                    ".lora_linear_layer.down.weight": ".lora_A.weight",
                    ".lora_linear_layer.up.weight": ".lora_B.weight"}


def peft_key(key: str) -> str:
    """``key`` with PEFT's ``lora_A``/``lora_B`` names, whatever naming it was written with."""
    suffix = next((s for s in _LEGACY_SUFFIXES if key.endswith(s)), None)
    return key if suffix is None else key[: -len(suffix)] + _LEGACY_SUFFIXES[suffix]


def diffusers_keys(component: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A component's PEFT state dict as the diffusers file's tensors: ``<component>.<module>.lora_A.weight``
    for every module, as diffusers' own training scripts save ``get_peft_model_state_dict``.

    One naming for every key, because ``load_lora_weights`` picks the naming of a component from
    its first key (in the file's sorted order): ``convert_state_dict_to_diffusers`` renames only
    the attention projections to ``lora.down``/``lora.up``, so a file whose first key is a conv or
    ``proj_in`` LoRA (still ``lora_A``) silently lost every attention LoRA on load."""
    return {f"{component}.{peft_key(k)}": v for k, v in state.items()}


def save_lora(pipe: Any, out_dir: Path) -> Path:
    """``pytorch_lora_weights.safetensors`` in diffusers format (``diffusers_keys``), via the
    pipeline class's own ``save_lora_weights`` so ``load_lora_weights`` on the same class reads
    it back.

    The PEFT configs travel in the file's metadata: without them diffusers assumes
    ``alpha == rank`` on load, and an adapter trained with another alpha would load at the
    wrong strength.
    """
    kwargs: dict[str, Any] = {}
    for name, state in lora_state(pipe).items():
        prefix = f"{name}."
        layers = {k[len(prefix):]: v.detach().to("cpu", torch.float32).contiguous()
                  for k, v in diffusers_keys(name, state).items()}
        kwargs[f"{name}_lora_layers"] = layers
        kwargs[f"{name}_lora_adapter_metadata"] = getattr(pipe, name).peft_config["default"].to_dict()
    type(pipe).save_lora_weights(save_directory=out_dir, safe_serialization=True, **kwargs)
    return out_dir / LORA_WEIGHT_NAME


def _peft_keys(component: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A component's part of a diffusers LoRA file with PEFT's key names (``save_lora``'s inverse),
    renamed key by key: files written before ``diffusers_keys`` mix ``lora.down``/``lora.up`` and
    ``lora_A``/``lora_B`` names within one component."""
    prefix = f"{component}."
    return {peft_key(k[len(prefix):]): v for k, v in state.items() if k.startswith(prefix)}


def init_from_lora(pipe: Any, path: Path) -> dict[str, int]:
    """Copy a diffusers LoRA file's weights (``train.init_lora``, e.g. the champion's) into the
    freshly injected adapters, so training continues from it instead of from zero. Every adapted
    component must find all its weights, with the same shapes; returns the tensors loaded per
    component."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    path = Path(path)
    if path.is_dir():
        path = path / LORA_WEIGHT_NAME
    setting = f"train.init_lora = {str(path)!r}"
    if not path.is_file():
        raise StageError(f"{setting} does not exist: point it at a {LORA_WEIGHT_NAME} (or its folder)")
    state = load_file(str(path))
    loaded: dict[str, int] = {}
    for name, current in lora_state(pipe).items():
        own = _peft_keys(name, state)
        missing = sorted(set(current) - set(own))
        if missing:
            raise StageError(f"{setting} has no weights for {len(missing)} of the {name}'s LoRA tensors "
                             f"(e.g. {missing[0]}): train with the same train.target_modules as it was")
        bad = [k for k in current if tuple(own[k].shape) != tuple(current[k].shape)]
        if bad:
            raise StageError(f"{setting}: {bad[0]} has shape {tuple(own[bad[0]].shape)}, the adapter's is "
                             f"{tuple(current[bad[0]].shape)}: set train.rank to the file's rank")
        module = getattr(pipe, name)
        dtype = next(iter(current.values())).dtype
        set_peft_model_state_dict(module, {k: own[k].to(dtype) for k in current}, adapter_name="default")
        loaded[name] = len(current)
    return loaded


def adapter_settings(path: Path) -> dict[str, Any]:
    """The ``train`` settings a LoRA file was trained with (from the PEFT configs ``save_lora``
    stores in its metadata): what a run continuing from it must use."""
    from safetensors import safe_open

    path = Path(path)
    with safe_open(str(path / LORA_WEIGHT_NAME if path.is_dir() else path), "pt") as f:
        meta = json.loads((f.metadata() or {}).get("lora_adapter_metadata") or "{}")
    denoiser = next((d for d in DENOISERS if f"{d}.r" in meta), None)
    if denoiser is None:
        raise StageError(f"{path} carries no LoRA configuration in its metadata: it was not saved by "
                         "lora-factory; set train.rank, train.alpha and train.target_modules by hand")
    targets = meta.get(f"{denoiser}.target_modules") or []
    return {"rank": int(meta[f"{denoiser}.r"]), "alpha": float(meta.get(f"{denoiser}.lora_alpha") or meta[f"{denoiser}.r"]),
            "target_modules": sorted(targets), "train_text_encoder": any(f"{t}.r" in meta for t in TEXT_ENCODERS)}
