"""A bitsandbytes-quantised base on the CPU. Diffusers' bitsandbytes quantizer refuses a machine
without a GPU ("No GPU found"), but bitsandbytes itself quantises and runs NF4 / int8 layers on the
CPU, so there the frozen denoiser is loaded in full precision and its linear layers are swapped
for bitsandbytes ones in place (the same modules diffusers would make; peft wraps them alike)."""

from __future__ import annotations

import torch

from lora_factory.errors import StageError


def _quantised(linear: torch.nn.Linear, kind: str, compute: torch.dtype) -> torch.nn.Module:
    """``linear`` as a frozen bitsandbytes NF4 (double-quantised) or int8 layer on the CPU."""
    import bitsandbytes as bnb

    bias = linear.bias is not None
    if kind == "nf4":
        new: torch.nn.Module = bnb.nn.Linear4bit(linear.in_features, linear.out_features, bias=bias,
                                                 compute_dtype=compute, compress_statistics=True, quant_type="nf4")
        new.weight = bnb.nn.Params4bit(linear.weight.data, requires_grad=False, compress_statistics=True,
                                       quant_type="nf4")
    else:
        new = bnb.nn.Linear8bitLt(linear.in_features, linear.out_features, bias=bias, has_fp16_weights=False)
        new.weight = bnb.nn.Int8Params(linear.weight.data, requires_grad=False, has_fp16_weights=False)
    if bias:
        new.bias = torch.nn.Parameter(linear.bias.data, requires_grad=False)
    return new.to("cpu")  # quantises the weight


def quantise_on_cpu(denoiser: torch.nn.Module, kind: str) -> int:
    """Swap every ``nn.Linear`` of ``denoiser`` for a bitsandbytes ``kind`` ("nf4" | "int8") layer
    (NF4 computes in fp32: the CPU's dtype) and set the flags diffusers' quantizer sets, which peft
    reads to wrap the layers with its bnb LoRA layers; returns how many were swapped."""
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as exc:
        raise StageError(f"train.base_quantization {kind!r} needs bitsandbytes: pip install bitsandbytes, "
                         "or set it to 'none'") from exc
    swapped = 0
    for parent in list(denoiser.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is torch.nn.Linear:
                try:
                    setattr(parent, name, _quantised(child, kind, torch.float32))
                except (RuntimeError, NotImplementedError) as exc:  # bitsandbytes' refusal of a backend
                    raise StageError(f"bitsandbytes cannot quantise to {kind} on this CPU ({exc}); "
                                     "set train.base_quantization to 'none'") from exc
                swapped += 1
    denoiser.is_loaded_in_4bit, denoiser.is_loaded_in_8bit = kind == "nf4", kind == "int8"
    return swapped
