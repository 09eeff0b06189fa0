"""Data-parallel training across processes (DDP semantics), started by ``torchrun`` or
``accelerate launch``: both set ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` / ``MASTER_ADDR``.

Why not wrap the UNet in ``DistributedDataParallel``: only the LoRA parameters train (a few MB),
spread over the UNet and possibly the text encoders; one all-reduce of their flattened gradients
per optimizer step is what DDP would do for them, works the same for every adapted component, and
keeps the loop one loop. Every rank starts from the same seeded LoRA init and applies the same
averaged gradient, so the weights stay identical without broadcasting them.

What differs per rank: the batches (each optimizer step deals ``world_size`` batches from the
shared data order and rank ``r`` takes the ``r``-th) and the random draws (noise, timesteps, VAE
samples: the loop's generator is seeded per rank). Everything that decides control flow — the
loss used by the guards and callbacks, the SIGTERM flag — is reduced across ranks, so every rank
takes the same branch. Files (checkpoints, the adapter, samples) and metrics are written by
rank 0.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    device: str = "cpu"  # where collectives' scalars live (NCCL only reduces CUDA tensors)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.size > 1


def init_world(device_type: str) -> World:
    """The process group from the launcher's environment; ``World()`` without a launcher."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = f"cuda:{local_rank}" if device_type == "cuda" else "cpu"
    if device_type == "cuda":
        torch.cuda.set_device(local_rank)
    return World(rank=dist.get_rank(), size=dist.get_world_size(), local_rank=local_rank, device=device)


def average_gradients(params: list[torch.nn.Parameter], world: World) -> None:
    """All-reduce the gradients (one flat buffer, one collective) and divide by the world size;
    a parameter without a gradient contributes zeros."""
    if not world.active:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= world.size
    offset = 0
    for p, g in zip(params, grads, strict=True):
        n = g.numel()
        p.grad = flat[offset:offset + n].view_as(g).clone()
        offset += n


def sum_across(value: torch.Tensor, world: World) -> torch.Tensor:
    """The sum of a tensor over ranks, on the device (no host sync); NaN on any rank makes it
    NaN on all."""
    if not world.active:
        return value
    total = value.clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total


def any_across(flag: bool, world: World) -> bool:
    if not world.active:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=world.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t[0] > 0)


def gather_objects(obj: Any, world: World) -> list[Any]:
    """Every rank's ``obj``, in rank order (rank-local state such as generator states)."""
    if not world.active:
        return [obj]
    out: list[Any] = [None] * world.size
    dist.all_gather_object(out, obj)
    return out


def barrier(world: World) -> None:
    if world.active:
        dist.barrier()
