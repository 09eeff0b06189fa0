"""A step's metrics, computed only when something reads them.

Most steps are not logging steps: the LoRA norm (a pass over every adapter weight), the peak
memory (a system call) and the float conversions cost nothing unless a callback asks for them
(``MetricsSink`` reads them every ``log_every`` steps; ``PlateauLR`` reads only the smoothed loss).
"""

from __future__ import annotations

import resource
from collections.abc import Callable, Iterator, Mapping

import torch

Value = float | Callable[[], float]


class StepMetrics(Mapping[str, float]):
    """Metric name → value; a callable value is called on first read and remembered. Read them
    during the hook that receives them: a later read sees the weights of a later step."""

    def __init__(self, values: dict[str, Value]) -> None:
        self._values = values

    def __getitem__(self, key: str) -> float:
        value = self._values[key]
        if callable(value):
            value = self._values[key] = float(value())
        return value

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def weights_norm(params: list[torch.nn.Parameter]) -> float:
    """The L2 norm of all the given weights together."""
    with torch.no_grad():
        return float(torch.linalg.vector_norm(torch.stack(torch._foreach_norm(params))))
