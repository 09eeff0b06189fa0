"""Multi-process training: the entry point each process runs, and the parent that starts them.

Each process runs ``python -m training.launch SPEC.json`` under a launcher that sets the
distributed environment — ``torchrun --nproc_per_node N`` (what the train task uses) or
``accelerate launch --multi_gpu --num_processes N -m training.launch SPEC.json``. The spec is a
``TrainJob`` written with ``TrainJob.write``; rank 0 appends each step's metrics to
``metrics.jsonl`` and writes its ``TrainResult`` to ``result.json``. The parent follows both files while the processes run, so metrics and
sample grids reach MLflow live, as in a single-process run.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from lora_factory.errors import StageError

from .job import TrainJob, TrainResult

METRICS_FILE = "metrics.jsonl"
RESULT_FILE = "result.json"
SPEC_FILE = "spec.json"
_POLL_S = 1.0


def _append_metrics(path: Path, step: int, metrics: dict[str, float]) -> None:
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps({"step": step, **metrics}) + "\n")


def main(argv: list[str]) -> int:
    """One process of a multi-process run (see the module docstring)."""
    from .trainer import train_lora

    spec_path = Path(argv[0])
    work = spec_path.parent
    result = train_lora(TrainJob.read(spec_path),
                        on_step=lambda step, metrics: _append_metrics(work / METRICS_FILE, step, metrics))
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_rank() == 0:
        result.write(work / RESULT_FILE)
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


class _Follower:
    """New metrics lines and new sample grids since the last look."""

    def __init__(self, work: Path, samples_dir: Path | None) -> None:
        self.metrics, self.samples_dir = work / METRICS_FILE, samples_dir
        self.offset, self.seen = 0, set()

    def poll(self, on_step: Callable[[int, dict[str, float]], None] | None,
             on_sample: Callable[[int, Path], None] | None) -> None:
        if self.metrics.is_file():
            with self.metrics.open(encoding="utf-8") as f:
                f.seek(self.offset)
                while (line := f.readline()).endswith("\n"):
                    self.offset = f.tell()
                    row = json.loads(line)
                    if on_step is not None:
                        on_step(int(row.pop("step")), row)
        if on_sample is not None and self.samples_dir is not None and self.samples_dir.is_dir():
            for grid in sorted(self.samples_dir.glob("step-*.png")):
                if grid.name not in self.seen:
                    self.seen.add(grid.name)
                    on_sample(int(grid.stem.split("-")[1]), grid)


def run_multiprocess(job: TrainJob, work: Path, on_step: Callable[[int, dict[str, float]], None] | None = None,
                     on_sample: Callable[[int, Path], None] | None = None) -> TrainResult:
    """Start ``job.train.num_processes`` training processes with torchrun on this machine,
    forward their metrics and sample grids while they run, and return rank 0's result."""
    num_processes = job.train.num_processes
    work.mkdir(parents=True, exist_ok=True)
    for stale in (METRICS_FILE, RESULT_FILE):
        (work / stale).unlink(missing_ok=True)
    job.write(work / SPEC_FILE)
    log_path = work / "processes.log"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={num_processes}", "-m", "training.launch", str(work / SPEC_FILE)]
    follower = _Follower(work, job.samples_dir or job.out_dir / "samples")
    with log_path.open("w", encoding="utf-8") as log_file:
        proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT)
        try:
            while proc.poll() is None:
                time.sleep(_POLL_S)
                follower.poll(on_step, on_sample)
        finally:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=60)
    follower.poll(on_step, on_sample)
    if proc.returncode != 0 or not (work / RESULT_FILE).is_file():
        raise StageError(f"multi-process training ({num_processes} processes) failed with exit code "
                         f"{proc.returncode}: {_last_error(log_path)}; full log: {log_path}")
    return TrainResult.read(work / RESULT_FILE)


def _last_error(log_path: Path) -> str:
    """The most telling line of the processes' log: the last factory error's message (a
    ``StageError`` raised in a rank), else the last exception line."""
    lines = [line.strip() for line in log_path.read_text(encoding="utf-8", errors="replace").splitlines()
             if line.strip()]
    for marker in ("lora_factory.errors.", "Error: "):
        for line in reversed(lines):
            if marker in line:
                return line.split(marker, 1)[1][:400] if marker.startswith("lora") else line[-400:]
    return lines[-1][-400:] if lines else "no output"


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
