"""Measure a denoiser's training memory by tracing one forward pass, on the meta device.

Why: the memory model (``training.tuner.memory``) needs, per model family, how many bytes of
activations a training step keeps for backward. Running SDXL at 1024 px needs a GPU; tracing it
on the ``meta`` device needs neither a GPU nor memory: every tensor has a shape and a dtype but
no data, and ``saved_tensors_hooks`` sees every tensor autograd keeps for backward. The numbers
in ``training.tuner.families`` come from here (``python -m training.tuner.trace sd15``), and the
tests check them against measured peaks of real CPU training steps.

Attention is traced as a fused kernel (flash / memory-efficient SDPA, which is what a GPU
training run and PyTorch's CPU kernel use): it keeps q, k, v, the output and the log-sum-exp,
never the attention matrix. Gradient checkpointing keeps the checkpointed units' inputs, plus,
during backward, one unit's recomputed activations at a time (the largest is what counts).
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import torch

# The modules diffusers wraps in gradient checkpointing (the innermost ones).
CHECKPOINT_UNITS = ("ResnetBlock2D", "BasicTransformerBlock")


@dataclass(frozen=True)
class Trace:
    """One traced training forward pass of a denoiser with LoRA, per sample."""

    denoiser_params: int
    lora_params_per_rank: float  # trainable LoRA parameters divided by the rank
    saved_bytes: int  # kept for backward, without checkpointing
    saved_bytes_checkpointed: int  # kept for backward with checkpointing, plus the largest unit


class _FusedAttention(torch.autograd.Function):
    """What a fused SDPA kernel keeps for backward: q, k, v, output and log-sum-exp."""

    @staticmethod
    def forward(ctx: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        out = q.new_empty((*q.shape[:-1], v.shape[-1]))
        lse = q.new_empty(q.shape[:-1], dtype=torch.float32)
        ctx.save_for_backward(q, k, v, out, lse)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, ...]:
        q, k, v, _, _ = ctx.saved_tensors
        return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


@contextlib.contextmanager
def fused_attention() -> Iterator[None]:
    """Route ``F.scaled_dot_product_attention`` through ``_FusedAttention`` while tracing."""
    import torch.nn.functional as F

    original = F.scaled_dot_product_attention

    def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return _FusedAttention.apply(q, k, v)

    F.scaled_dot_product_attention = sdpa
    try:
        yield
    finally:
        F.scaled_dot_product_attention = original


def unet_inputs(config: dict[str, Any], resolution: int, batch: int, dtype: torch.dtype,
                 device: str) -> tuple[tuple[Any, ...], dict[str, Any]]:
    side = resolution // 8  # the VAE's 8x downsampling
    x = torch.zeros(batch, config.get("in_channels", 4), side, side, device=device, dtype=dtype)
    text = torch.zeros(batch, 77, config["cross_attention_dim"], device=device, dtype=dtype)
    kwargs: dict[str, Any] = {}
    if config.get("addition_embed_type") == "text_time":
        pooled = config["projection_class_embeddings_input_dim"] - 6 * config["addition_time_embed_dim"]
        kwargs["added_cond_kwargs"] = {"text_embeds": torch.zeros(batch, pooled, device=device, dtype=dtype),
                                       "time_ids": torch.zeros(batch, 6, device=device, dtype=dtype)}
    return (x, torch.zeros(batch, device=device, dtype=torch.long), text), kwargs


def build_unet(config: dict[str, Any], rank: int, target_modules: list[str], dtype: torch.dtype,
               device: str = "meta") -> torch.nn.Module:
    """The UNet of ``config`` with a LoRA of ``rank``, frozen weights in ``dtype``, LoRA in fp32
    (as the trainer has it)."""
    from diffusers import UNet2DConditionModel
    from peft import LoraConfig

    with torch.device(device):
        unet = UNet2DConditionModel(**config)
    unet.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=list(target_modules),
                                init_lora_weights="gaussian"))
    unet.to(dtype)
    for p in unet.parameters():
        if p.requires_grad:
            p.data = p.data.float()
    return unet


def saved_bytes(unet: torch.nn.Module, config: dict[str, Any], resolution: int, batch: int,
                dtype: torch.dtype, device: str = "meta", fused: bool = True) -> tuple[int, int]:
    """(bytes autograd keeps for backward, bytes of the largest checkpoint unit) of one forward.
    ``fused=False`` keeps PyTorch's own attention (for a real CPU trace to compare with)."""
    params = {p.untyped_storage()._cdata for p in unet.parameters()}
    seen: dict[int, int] = {}
    per_unit: dict[int, int] = {}
    stack: list[int] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        key = storage._cdata
        if key not in params and key not in seen:
            seen[key] = storage.nbytes()
            if stack:
                per_unit[stack[-1]] = per_unit.get(stack[-1], 0) + storage.nbytes()
        return t

    def enter(module: torch.nn.Module, args: Any) -> None:
        stack.append(id(module))

    def leave(module: torch.nn.Module, args: Any, output: Any) -> None:
        stack.pop()

    handles = []
    for module in unet.modules():
        if type(module).__name__ in CHECKPOINT_UNITS:
            handles += [module.register_forward_pre_hook(enter), module.register_forward_hook(leave)]
    args, kwargs = unet_inputs(config, resolution, batch, dtype, device)
    try:
        attention = fused_attention() if fused else contextlib.nullcontext()
        with attention, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            unet(*args, **kwargs)
    finally:
        for h in handles:
            h.remove()
    return sum(seen.values()), max(per_unit.values(), default=0)


def lora_parameters_per_rank(unet: torch.nn.Module, target: str) -> int:
    """LoRA parameters per unit of rank on the modules PEFT would match for ``target`` (a name or
    a dotted suffix): ``in + out`` for each Linear or 1x1 Conv. Works on the meta device."""
    total = 0
    for name, module in unet.named_modules():
        if name == target or name.endswith("." + target):
            if isinstance(module, torch.nn.Linear):
                total += module.in_features + module.out_features
            elif isinstance(module, torch.nn.Conv2d):
                total += module.in_channels * module.kernel_size[0] * module.kernel_size[1] + module.out_channels
    return total


def trace_unet(config: dict[str, Any], resolution: int, dtype: torch.dtype = torch.float16,
               rank: int = 4, target_modules: tuple[str, ...] = ("to_k", "to_q", "to_v", "to_out.0"),
               device: str = "meta") -> Trace:
    """Trace one sample at ``resolution`` without, then with, gradient checkpointing."""
    unet = build_unet(config, rank, list(target_modules), dtype, device)
    unet.train()
    plain, largest_unit = saved_bytes(unet, config, resolution, 1, dtype, device)
    unet.enable_gradient_checkpointing()
    boundaries, _ = saved_bytes(unet, config, resolution, 1, dtype, device)
    total = sum(p.numel() for p in unet.parameters())
    lora = sum(p.numel() for p in unet.parameters() if p.requires_grad)
    return Trace(total - lora, lora / rank, plain, boundaries + largest_unit)


# SD1.5's UNet block layout at a fifth of its width: a mid-size model the CPU trains in seconds.
MIDSIZE_UNET: dict[str, Any] = {
    "sample_size": 16, "layers_per_block": 2, "block_out_channels": (64, 128, 256, 256),
    "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, "cross_attention_dim": 32,
    "attention_head_dim": 8, "norm_num_groups": 32,
}


def row_for_unet(config: dict[str, Any], resolution: int, name: str = "unet", activations: bool = True) -> Any:
    """A family row for a bare UNet: its own parameter counts and (``activations``) traced
    activations, no text encoder or VAE (what the tests and bench/tune.py measure on the CPU)."""
    from dataclasses import replace

    from diffusers import UNet2DConditionModel

    from .families import family_row

    with torch.device("meta"):
        unet = UNet2DConditionModel(**config)
    like = family_row("tiny-sd15")
    traced = {}
    for precision, dtype in (("half", torch.float16), ("full", torch.float32)) if activations else ():
        t = trace_unet(config, resolution, dtype)
        traced[(precision, False)], traced[(precision, True)] = t.saved_bytes, t.saved_bytes_checkpointed
    return replace(like, name=name, architecture=name, resolution=resolution, denoiser_params=sum(
        p.numel() for p in unet.parameters()), text_encoder_params=0, vae_params=0, vae_first_channels=0,
        lora_per_rank={t: lora_parameters_per_rank(unet, t) for t in like.lora_per_rank},
        activations=traced or {(p, c): 0 for p in ("half", "full") for c in (False, True)})


def main(argv: list[str]) -> None:  # pragma: no cover - a maintainer's tool
    """Print a family's traced figures: ``python -m training.tuner.trace sd15 [resolution]``."""
    from .families import denoiser_config, family_row

    name = argv[0]
    row = family_row(name)
    resolution = int(argv[1]) if len(argv) > 1 else row.resolution
    out = {}
    for label, dtype in (("half", torch.float16), ("full", torch.float32)):
        out[label] = asdict(trace_unet(denoiser_config(row.architecture), resolution, dtype))
    print(json.dumps({"family": name, "resolution": resolution, **out}, indent=2))


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
