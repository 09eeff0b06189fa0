"""Monitoring callbacks: a small API the loop calls, and the built-in ones.

The loop owns the training; callbacks watch it and may ask for two things: a different learning
rate (``state.scale_lr``) and a stop (``should_stop`` returning a ``Stop``). A callback with
memory (a window of losses) returns it from ``state_dict`` so a resumed run decides exactly as
an uninterrupted one would.

Hooks, all optional::

    on_train_start(state)            after a fresh start or a resume (state.step is where it continues)
    on_step(state, metrics)          every optimizer step: loss, loss_smoothed, lr, grad_norm, ...
                                     (each metric is computed when first read: read them in the hook)
    on_validation(state, val_loss)   after each validation pass
    on_checkpoint(state, path)       after a checkpoint folder is written
    on_sample(state, path)           after a sample grid image is written
    should_stop(state) -> Stop|None  asked after every step
    on_train_end(state)
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Stop:
    """A callback's request to end the run early; ``restore_best`` loads the best checkpoint's
    weights before saving the adapter."""

    reason: str
    restore_best: bool = True


@dataclass(frozen=True)
class Preempted(Stop):
    """SIGTERM (a preempted pod, a cancelled flow run): the loop checkpoints and the run ends
    with an error that says how to resume."""

    restore_best: bool = False


@dataclass(frozen=True)
class Diverged(Stop):
    """The NaN guard gave up: too many non-finite steps in a row. Nothing is saved."""

    restore_best: bool = False


@dataclass
class TrainState:
    """What callbacks see of the run."""

    step: int
    max_steps: int
    epoch: int = 0
    lr: float = 0.0
    loss_smoothed: float | None = None
    best_metric: float | None = None
    best_step: int | None = None
    checkpoint_dir: Path | None = None
    _scale_lr: Callable[[float], None] | None = field(default=None, repr=False)

    def scale_lr(self, factor: float) -> None:
        """Multiply the learning rate for the rest of the run."""
        if self._scale_lr is not None:
            self._scale_lr(factor)


class Callback:
    """Base class: override the hooks you need."""

    def on_train_start(self, state: TrainState) -> None: ...
    def on_step(self, state: TrainState, metrics: Mapping[str, float]) -> None: ...
    def on_validation(self, state: TrainState, val_loss: float) -> None: ...
    def on_checkpoint(self, state: TrainState, path: Path) -> None: ...
    def on_sample(self, state: TrainState, path: Path) -> None: ...
    def on_train_end(self, state: TrainState) -> None: ...

    def should_stop(self, state: TrainState) -> Stop | None:
        return None

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class CallbackList(Callback):
    """Fans every hook out to its callbacks; the first stop request wins."""

    def __init__(self, callbacks: list[Callback]) -> None:
        self.callbacks = list(callbacks)

    def on_train_start(self, state: TrainState) -> None:
        for cb in self.callbacks:
            cb.on_train_start(state)

    def on_step(self, state: TrainState, metrics: Mapping[str, float]) -> None:
        for cb in self.callbacks:
            cb.on_step(state, metrics)

    def on_validation(self, state: TrainState, val_loss: float) -> None:
        for cb in self.callbacks:
            cb.on_validation(state, val_loss)

    def on_checkpoint(self, state: TrainState, path: Path) -> None:
        for cb in self.callbacks:
            cb.on_checkpoint(state, path)

    def on_sample(self, state: TrainState, path: Path) -> None:
        for cb in self.callbacks:
            cb.on_sample(state, path)

    def on_train_end(self, state: TrainState) -> None:
        for cb in self.callbacks:
            cb.on_train_end(state)

    def should_stop(self, state: TrainState) -> Stop | None:
        for cb in self.callbacks:
            stop = cb.should_stop(state)
            if stop is not None:
                return stop
        return None

    def state_dict(self) -> dict[str, Any]:
        return {f"{i}:{type(cb).__name__}": cb.state_dict() for i, cb in enumerate(self.callbacks)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for i, cb in enumerate(self.callbacks):
            key = f"{i}:{type(cb).__name__}"
            if key in state:
                cb.load_state_dict(state[key])


class MetricsSink(Callback):
    """Forwards step metrics (every ``every`` steps) and validation loss to ``fn(step, metrics)``:
    the old ``on_step`` argument, and the MLflow logger in the train task."""

    def __init__(self, fn: Callable[[int, dict[str, float]], None], every: int = 1) -> None:
        self.fn, self.every = fn, every

    def on_step(self, state: TrainState, metrics: Mapping[str, float]) -> None:
        if state.step % self.every == 0:
            self.fn(state.step, dict(metrics))

    def on_validation(self, state: TrainState, val_loss: float) -> None:
        self.fn(state.step, {"val_loss": val_loss})


class StepLedger:
    """Makes a metric sink resume-safe: remembers (in a file) the last step it passed on and drops
    steps at or below it. A resumed run repeats the steps between its last checkpoint and the
    crash, with identical values; the tracking server must see each step once, without gaps."""

    def __init__(self, path: Path, fn: Callable[[int, dict[str, float]], None]) -> None:
        self.path, self.fn = Path(path), fn
        self.last: dict[str, int] = json.loads(self.path.read_text()) if self.path.is_file() else {}

    def __call__(self, step: int, metrics: dict[str, float]) -> None:
        fresh = {k: v for k, v in metrics.items() if step > self.last.get(k, 0)}
        if not fresh:
            return
        self.fn(step, fresh)
        self.last.update(dict.fromkeys(fresh, step))
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.last))
        tmp.replace(self.path)


class EarlyStopping(Callback):
    """Overfitting: validation loss rose over the last ``window`` validations while the (smoothed)
    training loss fell over the same span → stop and restore the best checkpoint."""

    def __init__(self, window: int) -> None:
        self.window = window
        self.history: list[tuple[float, float]] = []  # (val_loss, train_loss_smoothed)
        self.reason: str | None = None

    def on_validation(self, state: TrainState, val_loss: float) -> None:
        train = state.loss_smoothed if state.loss_smoothed is not None else float("nan")
        self.history.append((val_loss, train))
        recent = self.history[-(self.window + 1):]
        if len(recent) <= self.window:
            return
        vals = [v for v, _ in recent]
        rising = all(b > a for a, b in zip(vals, vals[1:], strict=False))
        falling = recent[-1][1] < recent[0][1]
        if rising and falling:
            self.reason = (f"early stop at step {state.step}: validation loss rose for {self.window} "
                           f"validations ({vals[0]:.4f} → {vals[-1]:.4f}) while the training loss fell")

    def should_stop(self, state: TrainState) -> Stop | None:
        return Stop(self.reason, restore_best=True) if self.reason else None

    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history = [tuple(x) for x in state.get("history", [])]


class PlateauLR(Callback):
    """Plateau: the smoothed training loss has not improved by ``min_delta`` (relative) for
    ``patience`` steps → multiply the LR by ``factor`` and start counting again."""

    def __init__(self, patience: int, factor: float, min_delta: float = 1e-3) -> None:
        self.patience, self.factor, self.min_delta = patience, factor, min_delta
        self.best: float | None = None
        self.since = 0
        self.reductions = 0

    def on_step(self, state: TrainState, metrics: Mapping[str, float]) -> None:
        loss = metrics.get("loss_smoothed")
        if loss is None or metrics.get("skipped"):
            return
        if self.best is None or loss < self.best * (1 - self.min_delta):
            self.best, self.since = loss, 0
            return
        self.since += 1
        if self.since >= self.patience:
            state.scale_lr(self.factor)
            self.reductions += 1
            self.since = 0
            self.best = loss

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "since": self.since, "reductions": self.reductions}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.since = state.get("best"), state.get("since", 0)
        self.reductions = state.get("reductions", 0)
