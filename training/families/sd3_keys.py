"""Reading an sd-scripts SD3 LoRA (``lora_unet_joint_blocks_0_x_block_attn_qkv``...) into
diffusers, by a map derived from diffusers' own single-file converter
(``convert_sd3_transformer_checkpoint_to_diffusers``, original MMDiT names → diffusers names)
and not from ``families.sd3``'s export table, so loading a file we wrote checks that table.

The converter is fed a probe checkpoint: every original weight it asks for is a column whose
rows carry (the key's number, the row). Each diffusers weight it returns then tells which
original weight and which rows (a third of a qkv, the two halves of a modulation swapped) it
took. A file's module is found as ComfyUI finds it: ``lora_unet_`` + an original key with its
dots as underscores (``lora_te1_`` / ``lora_te2_`` + a CLIP module path).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

_ROWS = 6  # probe rows per weight: a multiple of 3 (q, k, v) and of 2 (shift, scale)
RowMap = dict[str, list[tuple[str, tuple[int, ...]]]]  # original module -> [(diffusers module, probe rows)]


class _Probe(dict):
    """A checkpoint that gives the converter a tagged column for any key it pops."""

    def __init__(self, seed_keys: list[str]) -> None:
        super().__init__()
        self.names: list[str] = []
        for key in seed_keys:
            self[key] = self.tagged(key)

    def tagged(self, key: str) -> torch.Tensor:
        if key not in self.names:
            self.names.append(key)
        return (self.names.index(key) * _ROWS + torch.arange(_ROWS, dtype=torch.float64)).unsqueeze(1)

    def pop(self, key: str, *default: Any) -> Any:  # type: ignore[override]
        return super().pop(key) if key in self else self.tagged(key)


def original_to_diffusers(config: Any) -> RowMap:
    """Where each original MMDiT weight's rows go in diffusers, for a transformer of ``config``
    (its layer count, SD3.5's dual-attention layers and q/k norms decide the converter's path)."""
    from diffusers.loaders.single_file_utils import convert_sd3_transformer_checkpoint_to_diffusers

    seeds = [f"joint_blocks.{i}.x_block.attn.qkv.weight" for i in range(config.num_layers)]
    seeds += [f"joint_blocks.{i}.x_block.attn2.qkv.weight" for i in config.dual_attention_layers or ()]
    seeds += ["context_embedder.weight"] + (["joint_blocks.0.x_block.attn.ln_q.weight"] if config.qk_norm else [])
    probe = _Probe(seeds)
    converted = convert_sd3_transformer_checkpoint_to_diffusers(probe)
    out: RowMap = {}
    for key, tags in converted.items():
        if not key.endswith(".weight") or tags.ndim != 2:
            continue
        source = {int(t) // _ROWS for t in tags[:, 0]}
        if len(source) != 1:
            raise ValueError(f"diffusers' SD3 converter built {key} from several weights; no LoRA map for it")
        original = probe.names[source.pop()].removesuffix(".weight")
        rows = tuple(int(t) % _ROWS for t in tags[:, 0])
        out.setdefault(original, []).append((key.removesuffix(".weight"), rows))
    return out


def _rows(up: torch.Tensor, rows: tuple[int, ...]) -> torch.Tensor:
    """The probe's rows scaled to ``up``'s (exact at the thirds and halves the converter cuts)."""
    n = up.shape[0]
    return torch.cat([up[r * n // _ROWS:(r + 1) * n // _ROWS] for r in rows])


def diffusers_lora_from_kohya(path: Path, pipe: Any) -> dict[str, torch.Tensor]:
    """The sd-scripts SD3 file at ``path`` as a diffusers LoRA state dict (``transformer.…lora_A``),
    each module's ``alpha / rank`` folded into its up weight; one error line for a name no layer has."""
    from safetensors.torch import load_file

    state = load_file(str(path))
    row_map = original_to_diffusers(pipe.transformer.config)
    names: dict[str, tuple[str, list[tuple[str, tuple[int, ...]]]]] = {
        "lora_unet_" + o.replace(".", "_"): ("transformer", targets) for o, targets in row_map.items()}
    for prefix, component in (("lora_te1_", "text_encoder"), ("lora_te2_", "text_encoder_2")):
        for name, _ in getattr(pipe, component).named_modules():
            names[prefix + name.replace(".", "_")] = (component, [(name, tuple(range(_ROWS)))])
    out: dict[str, torch.Tensor] = {}
    for module in sorted({k.split(".", 1)[0] for k in state}):
        if module not in names:
            raise ValueError(f"{Path(path).name}: {module} names no layer of this SD3 pipeline")
        down, up = state[f"{module}.lora_down.weight"], state[f"{module}.lora_up.weight"]
        alpha = state.get(f"{module}.alpha")
        scale = float(alpha) / down.shape[0] if alpha is not None else 1.0
        component, targets = names[module]
        for target, rows in targets:
            out[f"{component}.{target}.lora_A.weight"] = down
            out[f"{component}.{target}.lora_B.weight"] = _rows(up, rows) * scale
    return out
