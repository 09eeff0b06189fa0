"""The kohya / A1111 / ComfyUI file: ``lora_unet_*`` / ``lora_te1_*`` / ``lora_te2_*`` modules with
``lora_down`` / ``lora_up`` weights, an ``alpha`` scalar per module, ``ss_*`` metadata and the
``modelspec.*`` keys (Stability AI's model spec, which ComfyUI and the hub read). The key names
are the family's (``ModelFamily.kohya_state``): for the UNet families they follow the diffusers
module paths, for Flux the original (BFL) module names kohya's sd-scripts use.

Why not diffusers' ``convert_state_dict_to_kohya``: it writes ``alpha = rank`` for every module
whatever alpha the adapter was trained with, so an adapter with ``alpha != rank`` would load at
the wrong strength in every UI.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import save_file

if TYPE_CHECKING:
    from .families import ModelFamily

KOHYA_WEIGHT_NAME = "lora_kohya.safetensors"
# kohya names SD1.x's single text encoder ``lora_te_`` and SDXL's two ``lora_te1_`` / ``lora_te2_``.
_PREFIXES = {
    "sd15": (("text_encoder.", "lora_te_"), ("unet.", "lora_unet_")),
    "sdxl": (("text_encoder_2.", "lora_te2_"), ("text_encoder.", "lora_te1_"), ("unet.", "lora_unet_")),
    # The transformers' own names come from their family (families.flux, families.sd3).
    "flux": (("text_encoder.", "lora_te1_"),),
    "sd3": (("text_encoder_2.", "lora_te2_"), ("text_encoder.", "lora_te1_")),
}
# Modules whose kohya name is not their diffusers path with "_" for ".": SDXL's added-conditioning
# MLP carries the original (sgm) names kohya and A1111 write, the only ones diffusers' kohya
# converter maps back (it turns ``add_embedding_linear_1`` into a module that does not exist).
_RENAMED = {
    "sdxl": {"unet.add_embedding.linear_1": "lora_unet_label_emb_0_0",
             "unet.add_embedding.linear_2": "lora_unet_label_emb_0_2"},
}
# A transformer module path -> (kohya LoRA name, member index in a fused layer or None).
KohyaName = Callable[[str], tuple[str, int | None]]


def kohya_prefixes(family: str) -> tuple[tuple[str, str], ...]:
    """(pipeline component + ".", kohya prefix) pairs of ``family``, e.g. ("unet.", "lora_unet_")."""
    return _PREFIXES[family]


def kohya_lora_name(family: str, component: str, prefix: str, module: str) -> str:
    """The kohya LoRA name of ``module`` (a path in ``component``, e.g. "unet.") of ``family``."""
    return _RENAMED.get(family, {}).get(component + module) or prefix + module.replace(".", "_")


def peft_to_kohya(state: dict[str, torch.Tensor], alpha: float, family: str = "sdxl") -> dict[str, torch.Tensor]:
    """PEFT keys (``unet.<module>.lora_A.weight``, prefixed by component) → kohya keys."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        prefix = next(((src, dst) for src, dst in _PREFIXES[family] if key.startswith(src)), None)
        if prefix is None:
            raise ValueError(f"LoRA key {key!r} names no known component (unet., text_encoder.)")
        module, kind = key[len(prefix[0]):].rsplit(".lora_", 1)
        name = kohya_lora_name(family, *prefix, module)
        if kind == "A.weight":
            out[f"{name}.lora_down.weight"] = value
            out[f"{name}.alpha"] = torch.tensor(float(alpha))
        elif kind == "B.weight":
            out[f"{name}.lora_up.weight"] = value
        else:
            raise ValueError(f"unsupported LoRA tensor {key!r} (only lora_A / lora_B weights)")
    return out


@dataclass(frozen=True)
class KohyaNames:
    """A transformer's module paths → sd-scripts' LoRA names: per kind of block (diffusers'
    ``transformer_blocks``...) the kohya prefix, the plain modules and the members of fused
    layers (name, index), and the top-level modules. Called like ``KohyaName``."""

    family: str
    blocks: dict[str, tuple[str, dict[str, str], dict[str, tuple[str, int]]]]
    top: dict[str, str]

    def __call__(self, module: str) -> tuple[str, int | None]:
        kind, _, rest = module.partition(".")
        index, _, rest = rest.partition(".")
        if kind in self.blocks and index.isdigit():
            prefix, plain, fused = self.blocks[kind]
            if rest in plain:
                return f"{prefix}{index}_{plain[rest]}", None
            if rest in fused:
                name, member = fused[rest]
                return f"{prefix}{index}_{name}", member
        elif module in self.top:
            return self.top[module], None
        raise ValueError(f"no kohya {self.family} name for LoRA module {module!r}")


def fused_lora(name: str, members: dict[int, tuple[torch.Tensor, torch.Tensor]], widths: tuple[int, ...],
               alpha: float) -> dict[str, torch.Tensor]:
    """One LoRA for a fused layer (qkv, Flux's linear1): the members' down weights stacked, their
    up weights on the block diagonal (a member without a LoRA contributes zeros), alpha times the
    number of members so each keeps its ``alpha / rank`` (UIs scale by alpha / rows of down).
    ``widths``: each member's output width in units of the layer's input width."""
    down0, _ = next(iter(members.values()))
    rank, width = down0.shape
    downs, ups = [], []
    for i, factor in enumerate(widths):
        down, up = members.get(i, (torch.zeros_like(down0), torch.zeros(factor * width, rank, dtype=down0.dtype)))
        downs.append(down)
        ups.append(up)
    return {f"{name}.lora_down.weight": torch.cat(downs), f"{name}.lora_up.weight": torch.block_diag(*ups),
            f"{name}.alpha": torch.tensor(float(alpha) * len(widths))}


def transformer_kohya_state(peft_state: dict[str, torch.Tensor], alpha: float, family: str, name_of: KohyaName,
                            widths_of: Callable[[str], tuple[int, ...]]) -> dict[str, torch.Tensor]:
    """``transformer.<module>.lora_A/B.weight`` (and text encoders') -> kohya keys named by
    ``name_of``, the members of a fused layer written as one LoRA (``fused_lora``)."""
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    text: dict[str, torch.Tensor] = {}
    for key, value in peft_state.items():
        if key.startswith("text_encoder"):
            text[key] = value
            continue
        if not key.startswith("transformer."):
            raise ValueError(f"LoRA key {key!r} names no {family} component (transformer., text_encoder.)")
        module, kind = key[len("transformer."):].rsplit(".lora_", 1)
        pairs.setdefault(module, {})[kind] = value
    out: dict[str, torch.Tensor] = {}
    fused: dict[str, dict[int, tuple[torch.Tensor, torch.Tensor]]] = {}
    for module, weights in pairs.items():
        name, member = name_of(module)
        down, up = weights["A.weight"], weights["B.weight"]
        if member is None:
            out |= {f"{name}.lora_down.weight": down, f"{name}.lora_up.weight": up,
                    f"{name}.alpha": torch.tensor(float(alpha))}
        else:
            fused.setdefault(name, {})[member] = (down, up)
    for name, members in fused.items():
        out |= fused_lora(name, members, widths_of(name), alpha)
    return out | peft_to_kohya(text, alpha, family) if text else out


def kohya_stand_ins(transformer: torch.nn.Module, name_of: KohyaName) -> dict[str, torch.nn.Module]:
    """A transformer's kohya names as shape stand-ins on the meta device: a fused layer takes its
    members' input and the sum of their outputs, as ``fused_lora`` writes it."""
    shapes: dict[str, tuple[int, int]] = {}
    for name, layer in transformer.named_modules():
        if not isinstance(layer, torch.nn.Linear):
            continue
        try:
            kohya, _ = name_of(name)
        except ValueError:
            continue
        shapes[kohya] = (layer.in_features, shapes.get(kohya, (0, 0))[1] + layer.out_features)
    return {k: torch.nn.Linear(i, o, bias=False, device="meta") for k, (i, o) in shapes.items()}


def prefixed_layers(pipe: Any, family: str) -> dict[str, torch.nn.Module]:
    """The layers of the components ``kohya_prefixes(family)`` names, by kohya name."""
    layers: dict[str, torch.nn.Module] = {}
    for component, prefix in _PREFIXES[family]:
        module = getattr(pipe, component.rstrip("."), None)
        for name, layer in module.named_modules() if module is not None else ():
            if isinstance(layer, torch.nn.Linear | torch.nn.Conv2d):
                layers[kohya_lora_name(family, component, prefix, name)] = layer
    return layers


def ss_metadata(base_version: str, rank: int, alpha: float, info: dict[str, Any]) -> dict[str, str]:
    """The ``ss_*`` keys kohya's sd-scripts write and UIs display (all values are strings)."""
    meta = {
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(rank),
        "ss_network_alpha": str(alpha),
        "ss_base_model_version": base_version,
        "ss_v2": "False",
        "ss_sd_model_name": str(info.get("base_ref", "")),
        "ss_resolution": str(info.get("resolution", "")),
        "ss_learning_rate": str(info.get("learning_rate", "")),
        "ss_max_train_steps": str(info.get("steps", "")),
        "ss_num_train_images": str(info.get("num_images", "")),
        "ss_seed": str(info.get("seed", "")),
        "ss_output_name": str(info.get("name", "lora-factory")),
        "ss_training_comment": "trained by lora-factory",
    }
    if info.get("tag_frequency"):
        meta["ss_tag_frequency"] = json.dumps(info["tag_frequency"])
    return meta


def modelspec_metadata(family: ModelFamily, info: dict[str, Any]) -> dict[str, str]:
    """The ``modelspec.*`` keys (SAI model spec 1.0.0) of a LoRA file. No date: two runs with
    the same inputs write the same file."""
    resolution = info.get("resolution", "")
    return {
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": family.modelspec_architecture,
        "modelspec.implementation": family.modelspec_implementation,
        "modelspec.title": str(info.get("name", "lora-factory")),
        "modelspec.resolution": f"{resolution}x{resolution}",
        "modelspec.prediction_type": family.modelspec_prediction,
    }


def save_kohya(state: dict[str, torch.Tensor], path: Path, family: ModelFamily, rank: int, alpha: float,
               info: dict[str, Any]) -> Path:
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous()
               for k, v in family.kohya_state(state, alpha).items()}
    metadata = {**ss_metadata(family.kohya_base_version, rank, alpha, info), **modelspec_metadata(family, info)}
    save_file(tensors, str(path), metadata=metadata)
    return Path(path)


# -- dataset metadata (from the label stage), stamped on after training -------------------------
def dataset_metadata(trigger_word: str | None, tag_frequency: dict[str, int], num_images: int,
                     repeats: int = 1, summary: str | None = None) -> dict[str, str]:
    """The keys A1111 / ComfyUI show for a LoRA's training data: ``ss_tag_frequency`` (per dataset
    folder, as sd-scripts writes it: the trigger word counts in every caption), ``ss_dataset_dirs``,
    and ``modelspec.trigger_phrase`` / ``modelspec.description``."""
    folder = f"{repeats}_{trigger_word or 'dataset'}"
    tags = ({trigger_word: num_images} if trigger_word else {}) | dict(tag_frequency)
    meta = {"ss_tag_frequency": json.dumps({folder: tags}, ensure_ascii=False),
            "ss_dataset_dirs": json.dumps({folder: {"n_repeats": repeats, "img_count": num_images}})}
    if trigger_word:
        meta["modelspec.trigger_phrase"] = trigger_word
    if summary:
        meta["modelspec.description"] = summary
    return meta


def stamp_metadata(path: Path, extra: dict[str, str]) -> None:
    """Add (or replace) metadata keys of a safetensors file; the tensors are written back as they were."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata() or {})
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no __iter__
    tmp = Path(path).with_name(Path(path).name + ".tmp")
    save_file(tensors, str(tmp), metadata={**meta, **extra})
    tmp.replace(path)
