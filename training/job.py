"""The training job and its result as typed specs: what crosses a process boundary.

A ``TrainJob`` is everything ``train_lora`` needs to know; the train task builds one, a
single-process run passes it to ``train_lora``, a multi-process run writes it to ``spec.json``
(``TrainJob.write``) and every launched process reads it back (``TrainJob.read``). Rank 0 writes
its ``TrainResult`` the same way. Both are serialised with pydantic's own JSON methods, so a field
is named once, here, and a spec that does not fit is refused with its key's path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from lora_factory.config import TrainConfig
from lora_factory.errors import StageError


class _Spec(BaseModel):
    # NaN and infinity stay numbers in the JSON (a diverged validation loss is still a result).
    model_config = ConfigDict(extra="forbid", ser_json_inf_nan="constants")

    def write(self, path: Path) -> Path:
        path.write_text(self.model_dump_json(indent=2), encoding="utf-8")
        return path

    @classmethod
    def read(cls, path: Path) -> Any:
        """The spec in ``path``; one line naming the first bad key when it does not fit."""
        try:
            return cls.model_validate_json(Path(path).read_text(encoding="utf-8"))
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(part) for part in first["loc"]) or "(top level)"
            raise StageError(f"{path} is not a {cls.__name__} spec: {where}: {first['msg']} "
                             f"({e.error_count()} problem(s)); write it with {cls.__name__}.write") from e


class CardNotes(_Spec):
    """What the model card adds beyond the training run's own facts."""

    trigger_word: str | None = None
    dataset: dict[str, Any] = Field(default_factory=dict)  # dataset statistics
    eval_scores: dict[str, Any] | None = None


class TrainJob(_Spec):
    """One LoRA training run: base model, data, settings and where things go.

    ``cache_dir`` holds the base models; with ``checkpoint_dir`` the run checkpoints there and,
    when ``train.resume``, continues from its latest checkpoint; with ``feature_cache_dir``
    latents and text embeddings are cached there by content (and class images kept there);
    ``samples_dir`` gets the step sample grids (default ``out_dir/samples``).
    """

    base_ref: str
    family: str | None = None  # None: read from the base model (checked against it when set)
    dataset_dir: Path
    train: TrainConfig
    out_dir: Path
    cache_dir: Path
    seed: int
    checkpoint_dir: Path | None = None
    feature_cache_dir: Path | None = None
    samples_dir: Path | None = None
    card: CardNotes = Field(default_factory=CardNotes)


class TrainResult(_Spec):
    """What a training run produced: where the adapter is, and how the loss went."""

    lora_dir: Path
    steps: int
    final_loss: float
    losses: list[float] = Field(default_factory=list)
    seconds: float = 0.0
    resumed_from: int | None = None  # the checkpoint step a resumed run continued from
    stopped_early: str | None = None  # why the run ended before max_steps (a callback's reason)
    best_step: int | None = None
    val_loss: float | None = None  # the last validation loss (of the restored best on early stop)
    buckets: dict[str, int] = Field(default_factory=dict)  # training images per bucket ("WxH")
    cache: dict[str, Any] = Field(default_factory=dict)  # feature-cache hits/misses, VAE encodes
