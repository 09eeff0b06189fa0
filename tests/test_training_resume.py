"""Checkpoints, exact resume (a real SIGKILLed subprocess), SIGTERM, the resume guard, the NaN
guard, validation + best checkpoint + early stop, and the callback API (tiny SD1.5, CPU)."""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lora_factory.errors import StageError
from tests.training_helpers import lora_tensors, small_cfg, tiny_job, write_dataset
from training import checkpoints as ckpt
from training.callbacks import Callback, EarlyStopping, PlateauLR, StepLedger, Stop, TrainState
from training.lora import LORA_WEIGHT_NAME
from training.trainer import train_lora

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("ds"), [(80, 64), (64, 96), (128, 128), (96, 72)])


def _child(args: list[str]) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "tests.resume_child", *args], cwd=ROOT, env=env, text=True,
                          capture_output=True, timeout=300)


def test_a_sigkilled_run_resumes_to_the_same_weights_without_metric_gaps(
    dataset_dir: Path, model_cache: Path, tmp_path: Path
) -> None:
    kill_at = random.randint(4, 7)  # past the step-3 checkpoint; 6 is killed before its own
    # The kill happens in on_step, before that step's checkpoint: the last one is below kill_at.
    last_saved = (kill_at - 1) // 3 * 3
    ckpt_dir, log = tmp_path / "ckpt", tmp_path / "metrics.jsonl"
    ckpt_dir.mkdir()
    common = [str(dataset_dir), str(model_cache), str(ckpt_dir), str(tmp_path / "out"), str(log)]
    threads = str(torch.get_num_threads())

    killed = _child([*common, str(kill_at), threads])
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert not (tmp_path / "out" / LORA_WEIGHT_NAME).exists()
    last = ckpt.latest_checkpoint(ckpt_dir)
    assert last is not None and last.name == f"step-{last_saved:06d}", kill_at

    resumed = _child([*common, "0", threads, str(tmp_path / "ref")])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    summary, ref_losses = (json.loads(line) for line in resumed.stdout.strip().splitlines()[-2:])
    assert summary == {"resumed_from": last_saved, "steps": 8}

    a, b = lora_tensors(tmp_path / "out"), lora_tensors(tmp_path / "ref")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), f"killed at step {kill_at}: weights differ"
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 9))  # each step once, no gaps
    assert [r["loss"] for r in rows] == [ref_losses[str(s)] for s in range(1, 9)]
    lrs = [r["lr"] for r in rows]
    # diffusers' warmup starts at 0: 0, lr/2, lr, then the cosine decay, across the restart.
    assert lrs[:3] == [0.0, pytest.approx(5e-3), pytest.approx(1e-2)]
    assert all(x > y for x, y in zip(lrs[2:], lrs[3:], strict=False))


def test_sigterm_checkpoints_and_a_changed_dataset_or_config_refuses_to_resume(
    dataset_dir: Path, model_cache: Path, tmp_path: Path
) -> None:
    ckpt_dir = tmp_path / "ckpt"
    cfg = small_cfg(max_steps=4, batch_size=2)

    def term_at_2(step: int, _m: dict[str, float]) -> None:
        if step == 2:
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(StageError, match="stopped by SIGTERM at step 2") as info:
        train_lora(tiny_job(dataset_dir, cfg, tmp_path / "a", model_cache, checkpoint_dir=ckpt_dir),
                   on_step=term_at_2)
    assert "\n" not in str(info.value) and "step-000002" in str(info.value)
    assert ckpt.latest_checkpoint(ckpt_dir) == ckpt.step_dir(ckpt_dir, 2)

    changed = tmp_path / "changed"
    shutil.copytree(dataset_dir, changed)
    (changed / "metadata.jsonl").write_text((changed / "metadata.jsonl").read_text().replace("yellow", "red"))
    with pytest.raises(StageError, match=r"the dataset changed.*force_resume") as info:
        train_lora(tiny_job(changed, cfg, tmp_path / "b", model_cache, checkpoint_dir=ckpt_dir))
    assert "\n" not in str(info.value)
    with pytest.raises(StageError, match="the training config changed"):
        train_lora(tiny_job(dataset_dir, small_cfg(max_steps=4, batch_size=2, rank=8),
                            tmp_path / "c", model_cache, checkpoint_dir=ckpt_dir))

    steps: list[int] = []
    forced = train_lora(tiny_job(changed, small_cfg(max_steps=4, batch_size=2, force_resume=True),
                                 tmp_path / "d", model_cache, checkpoint_dir=ckpt_dir),
                        on_step=lambda s, _m: steps.append(s))
    assert forced.resumed_from == 2 and forced.steps == 4 and steps == [3, 4]
    assert len(forced.losses) == 4  # the losses of the first attempt travel in the checkpoint


def test_validation_keeps_the_best_and_last_k_and_a_stop_restores_the_best(
    dataset_dir: Path, model_cache: Path, tmp_path: Path
) -> None:
    class StopAt(Callback):
        def __init__(self) -> None:
            self.events: list[str] = []

        def on_validation(self, state: TrainState, val_loss: float) -> None:
            self.events.append(f"val{state.step}")

        def on_checkpoint(self, state: TrainState, path: Path) -> None:
            self.events.append(path.name)

        def should_stop(self, state: TrainState) -> Stop | None:
            return Stop("enough", restore_best=True) if state.step == 5 else None

    metrics: dict[int, dict[str, float]] = {}
    stopper = StopAt()
    cfg = small_cfg(max_steps=8, batch_size=2, validation_split=0.25, validation_every=1,
                    checkpoint_every=1, keep_checkpoints=2, learning_rate=3e-2)
    ckpt_dir = tmp_path / "ckpt"
    result = train_lora(tiny_job(dataset_dir, cfg, tmp_path / "lora", model_cache, checkpoint_dir=ckpt_dir),
                        on_step=lambda s, m: metrics.setdefault(s, {}).update(m), callbacks=[stopper])
    assert result.steps == 5 and result.stopped_early == "enough"
    assert stopper.events[:2] == ["val1", "step-000001"]
    assert sorted(p.name for p in ckpt_dir.iterdir()) == ["best", "step-000004", "step-000005"]
    vals = {s: m["val_loss"] for s, m in metrics.items()}
    assert set(vals) == {1, 2, 3, 4, 5} and all(math.isfinite(v) for v in vals.values())
    best_step = min(vals, key=vals.get)
    assert result.best_step == best_step and result.val_loss == pytest.approx(vals[best_step])

    # The saved adapter is the best checkpoint's, not step 5's (unless step 5 was the best).
    best_weights, best_state = ckpt.load_checkpoint(ckpt_dir / "best")
    assert best_state["step"] == best_step
    saved = lora_tensors(tmp_path / "lora")
    for name, value in best_weights.items():
        key = name.replace(".lora_A.default.weight", ".lora_A.weight").replace(
            ".lora_B.default.weight", ".lora_B.weight")
        assert torch.equal(saved[key], value), key


def test_nan_guard_skips_a_bad_step_lowers_the_lr_and_stops_after_n_in_a_row(
    dataset_dir: Path, model_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import training.families.unet as unet_family

    real = unet_family.diffusion_loss
    bad_steps: set[int] = set()
    calls = {"n": 0}

    def injected(*args, **kwargs):
        calls["n"] += 1
        loss = real(*args, **kwargs)
        return loss * float("nan") if calls["n"] in bad_steps else loss

    monkeypatch.setattr(unet_family, "diffusion_loss", injected)
    bad_steps.update({3})
    metrics: dict[int, dict[str, float]] = {}
    result = train_lora(tiny_job(dataset_dir, small_cfg(max_steps=5, batch_size=2), tmp_path / "once",
                                 model_cache), on_step=lambda s, m: metrics.__setitem__(s, m))
    assert result.steps == 5 and len(result.losses) == 4
    assert metrics[3]["skipped"] == 1.0 and math.isnan(metrics[3]["loss"])
    assert metrics[4]["skipped"] == 0.0 and metrics[4]["lr"] == pytest.approx(metrics[2]["lr"] / 2)
    assert all(torch.isfinite(v).all() for v in lora_tensors(tmp_path / "once").values())

    calls["n"] = 0
    bad_steps.clear()
    bad_steps.update(range(3, 100))
    ckpt_dir = tmp_path / "ckpt"
    with pytest.raises(StageError, match=r"diverged at step 4: .* 2 steps in a row") as info:
        train_lora(tiny_job(dataset_dir, small_cfg(max_steps=8, batch_size=2, checkpoint_every=2,
                                                   nan_max_consecutive=2),
                            tmp_path / "always", model_cache, checkpoint_dir=ckpt_dir))
    assert "\n" not in str(info.value) and "step-000002" in str(info.value)
    assert ckpt.latest_checkpoint(ckpt_dir) == ckpt.step_dir(ckpt_dir, 2)
    assert not (tmp_path / "always" / LORA_WEIGHT_NAME).exists()
    weights, _ = ckpt.load_checkpoint(ckpt_dir / "step-000002")
    assert all(torch.isfinite(v).all() for v in weights.values())


# Callback logic without a model --------------------------------------------------------------

def _state(step: int, smoothed: float | None = None) -> TrainState:
    return TrainState(step=step, max_steps=100, loss_smoothed=smoothed)


def test_early_stopping_needs_rising_validation_and_falling_training_loss() -> None:
    cb = EarlyStopping(window=2)
    for step, (val, train) in enumerate([(1.0, 1.0), (0.8, 0.9), (0.9, 0.8), (1.0, 0.7)], start=1):
        assert cb.should_stop(_state(step)) is None
        cb.on_validation(_state(step, train), val)
    stop = cb.should_stop(_state(4))
    assert stop is not None and stop.restore_best and "rose for 2 validations" in stop.reason

    # Rising validation loss while training loss rises too is not overfitting.
    flat = EarlyStopping(window=2)
    for step, (val, train) in enumerate([(0.8, 0.8), (0.9, 0.9), (1.0, 1.0)], start=1):
        flat.on_validation(_state(step, train), val)
    assert flat.should_stop(_state(3)) is None

    # Its memory survives a checkpoint.
    again = EarlyStopping(window=2)
    again.load_state_dict(json.loads(json.dumps(cb.state_dict()))["history"] and cb.state_dict())
    again.on_validation(_state(5, 0.6), 1.1)
    assert again.should_stop(_state(5)) is not None


def test_plateau_reduces_the_lr_after_patience_steps_without_improvement() -> None:
    factors: list[float] = []
    state = TrainState(step=0, max_steps=100, _scale_lr=factors.append)
    cb = PlateauLR(patience=3, factor=0.5)
    for loss in [1.0, 0.9, 0.9, 0.9, 0.9, 0.95, 0.8]:
        cb.on_step(state, {"loss_smoothed": loss})
    assert factors == [0.5]
    assert PlateauLR(3, 0.5).state_dict() != cb.state_dict()


def test_scaled_lr_survives_the_schedule_and_a_state_dict_round_trip() -> None:
    from training.optim import make_lr_scheduler, scale_lr

    param = torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.AdamW([param], lr=1.0)
    sched = make_lr_scheduler(small_cfg(lr_scheduler="cosine", max_steps=10), opt)
    opt.step()
    sched.step()
    before = sched.get_last_lr()[0]
    scale_lr(sched, opt, 0.5)
    assert sched.get_last_lr()[0] == pytest.approx(before / 2)
    sched.step()
    expected = 0.5 * 0.5 * (1 + math.cos(math.pi * 2 / 10))
    assert sched.get_last_lr()[0] == pytest.approx(expected)
    opt2 = torch.optim.AdamW([param], lr=1.0)
    sched2 = make_lr_scheduler(small_cfg(lr_scheduler="cosine", max_steps=10), opt2)
    opt2.load_state_dict(opt.state_dict())
    sched2.load_state_dict(sched.state_dict())
    sched.step()
    sched2.step()
    assert sched2.get_last_lr() == sched.get_last_lr()


def test_step_ledger_passes_each_step_once_across_restarts(tmp_path: Path) -> None:
    seen: list[tuple[int, dict[str, float]]] = []
    ledger = StepLedger(tmp_path / "ledger.json", lambda s, m: seen.append((s, m)))
    for step in (1, 2, 3):
        ledger(step, {"loss": float(step)})
    restarted = StepLedger(tmp_path / "ledger.json", lambda s, m: seen.append((s, m)))
    for step in (2, 3, 4):
        restarted(step, {"loss": float(step)})
    restarted(4, {"val_loss": 0.5})  # another metric at an already-logged step is new
    assert seen == [(1, {"loss": 1.0}), (2, {"loss": 2.0}), (3, {"loss": 3.0}), (4, {"loss": 4.0}),
                    (4, {"val_loss": 0.5})]


def test_checkpoints_are_atomic_and_pruned(tmp_path: Path) -> None:
    w = {"a": torch.ones(2)}
    for step in (1, 2, 3):
        ckpt.save_checkpoint(ckpt.step_dir(tmp_path, step), w, {"step": step})
    (tmp_path / "step-000004.tmp").mkdir()  # a save that crashed half-way
    assert ckpt.latest_checkpoint(tmp_path) == ckpt.step_dir(tmp_path, 3)
    ckpt.prune(tmp_path, keep=2)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step-000002", "step-000003"]
    weights, state = ckpt.load_checkpoint(ckpt.step_dir(tmp_path, 3))
    assert state["step"] == 3 and torch.equal(weights["a"], w["a"])
    assert load_file(str(ckpt.step_dir(tmp_path, 3) / ckpt.WEIGHTS)).keys() == {"a"}
