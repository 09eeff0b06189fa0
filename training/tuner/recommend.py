"""The recommendation: prior -> statistics rules -> past runs -> the user's pins -> memory fit.

``recommend(request)`` returns a complete, validated ``TrainConfig`` and, for every value, the
rule, prior, past runs, pin or memory step behind it. The keys the tuner does not decide
(device, logging, export, prior preservation...) come from the base config (the profile with
its overrides). A pinned key keeps its value and the rules read it as an input, so the rest
adapts: a pinned rank sets the alpha, a pinned batch sets the accumulation, a pinned Prodigy
sets the learning rate to 1.0, a pinned CPU device turns mixed precision and 8-bit Adam off.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from lora_factory.config import FactoryConfig, TrainConfig
from lora_factory.errors import ConfigError

from . import rules
from .families import FamilyRow
from .history import SHIFTED, PastRun, Shift, nearest, shift
from .inputs import TuneStats
from .memory import MemoryEstimate, estimate, fit_to_budget
from .rules import PRIORS, Prior
from .suggestion import TUNED, PastSuggestion


def _flow_matching(base_family: str) -> bool:
    """Trained with flow matching (the family's prediction type): no min-SNR weighting."""
    from ..families import family_for

    return family_for(base_family).modelspec_prediction == "flow"


@dataclass(frozen=True)
class Choice:
    value: Any
    why: str
    source: str  # prior, rule, history, pinned, memory, budget, profile


@dataclass
class TuneRequest:
    """Everything a recommendation depends on (the same request gives the same config)."""

    stats: TuneStats
    family: FamilyRow
    base: TrainConfig = field(default_factory=TrainConfig)  # non-tuned keys and pinned values
    pinned: frozenset[str] = frozenset()
    gpu_gb: float | None = None
    time_budget_h: float | None = None
    seconds_per_step: float | None = None
    task_type: str | None = None
    history: Sequence[PastRun] = ()
    history_neighbours: int = 5
    suggestion: PastSuggestion | None = None  # the concept's last rejection's advice


@dataclass
class Recommendation:
    config: TrainConfig
    choices: dict[str, Choice]
    memory: MemoryEstimate
    request: TuneRequest
    strategy: str
    task: str = ""
    task_why: str = ""
    shift: Shift | None = None
    notes: list[str] = field(default_factory=list)


class Draft:
    """The values decided so far; a pinned key always keeps the base config's value."""

    def __init__(self, base: TrainConfig, pinned: frozenset[str]) -> None:
        self.base, self.pinned = base, pinned
        self.values: dict[str, Any] = {}
        self.choices: dict[str, Choice] = {}

    def set(self, key: str, value: Any, why: str, source: str = "rule") -> Any:
        if key in self.pinned:
            value = getattr(self.base, key)
            why, source = f"pinned: you set train.{key}", "pinned"
        self.values[key] = value
        self.choices[key] = Choice(value, why, source)
        return value

    def __getitem__(self, key: str) -> Any:
        return self.values[key]


def _round_lr(lr: float) -> float:
    return float(f"{lr:.2g}")


def _core(d: Draft, p: Prior, row: FamilyRow, stats: TuneStats, task: str) -> None:
    """Rank, learning rates, optimizer, precision, batch, resolution, steps."""
    cpu = d.base.device == "cpu"  # the device is not the tuner's: the profile's or yours
    d.set("mixed_precision", "no" if cpu else p.mixed_precision,
          "no mixed precision on the CPU" if cpu else f"the {row.name} community default", "prior")
    d.set("optimizer", "adamw" if cpu else p.optimizer,
          "AdamW: 8-bit AdamW needs CUDA" if cpu else "8-bit AdamW: the community default, a quarter of the state memory",
          "prior")
    rank, why = rules.rank_for(p, task, stats)
    d.set("rank", rank, why)
    if row.default_targets == rules.ATTENTION:
        d.set("target_modules", list(rules.ATTENTION), "the attention projections (diffusers' and kohya's default)",
              "prior")
    else:
        d.set("target_modules", list(row.default_targets), f"the {row.name} family's attention and MLP projections",
              "prior")
    d.set("train_text_encoder", False, "UNet only: keeps text embeddings cacheable and lowers the risk of "
          "overfitting the prompt (kohya recommends it for SDXL)", "prior")
    batch = d.set("batch_size", max(1, min(p.batch_size, stats.num_images)),
                  f"the {row.name} default {p.batch_size}, at most the {stats.num_images} images", "prior")
    d.set("gradient_accumulation_steps", max(1, math.ceil(p.effective_batch / batch)),
          f"an effective batch of {p.effective_batch} (the steps rule counts in those)")
    effective = d["batch_size"] * d["gradient_accumulation_steps"]
    scale = math.sqrt(effective / p.effective_batch)
    if d["optimizer"] == "prodigy":
        d.set("learning_rate", 1.0, "Prodigy estimates its own step size; its rate is a multiplier")
        d.set("text_encoder_lr", 1.0, "Prodigy: a multiplier, as for the UNet")
    else:
        note = "" if scale == 1 else f" x sqrt({effective}/{p.effective_batch}) for the effective batch"
        d.set("learning_rate", _round_lr(p.learning_rate * scale), f"the {row.name} community default{note}", "prior")
        d.set("text_encoder_lr", _round_lr(p.text_encoder_lr * scale),
              f"the {row.name} default for text-encoder LoRAs (lower: they overfit faster)", "prior")
    steps, repeats, why = rules.steps_for(p, stats.num_images)
    d.set("max_steps", steps, why)
    d.set("repeats", repeats, f"{p.image_repeats_per_epoch} image-repeats per epoch / {stats.num_images} images")
    _resolution(d, row, stats)


def _resolution(d: Draft, row: FamilyRow, stats: TuneStats) -> None:
    native = row.resolution
    res, why = native, f"{row.name}'s native resolution"
    if stats.short_side_median and stats.short_side_median < native:
        res = max(row.min_resolution, int(stats.short_side_median) // row.bucket_step * row.bucket_step)
        why = (f"the images' median short side is {stats.short_side_median:.0f} px (buckets never upscale), "
               f"so {res} of the native {native}")
    d.set("resolution", res, why)
    d.set("aspect_buckets", True, f"{stats.non_square_share:.0%} of the images are not square; "
          "each trains at its own aspect ratio")
    d.set("bucket_step", row.bucket_step, f"the {row.name} latent grid")


def _data_and_loss(d: Draft, p: Prior, stats: TuneStats, task: str, flow: bool) -> None:
    photo = stats.domain in rules.PHOTO_DOMAINS
    d.set("noise_offset", p.noise_offset if photo else 0.0,
          "offset noise for photographs (very dark and bright scenes)" if photo
          else f"no offset noise for {stats.domain or 'these'} images", "prior")
    if flow:
        d.set("snr_gamma", None, "flow matching: logit-normal timesteps with uniform weighting (min-SNR is DDPM's)",
              "prior")
    else:
        d.set("snr_gamma", rules.MIN_SNR_GAMMA, "min-SNR weighting, the paper's gamma", "prior")
    dropout, why = rules.caption_dropout_for(task, stats.caption_coverage)
    d.set("caption_dropout", dropout, why)
    tags = stats.tags_per_caption >= rules.SHUFFLE_TAGS_FROM
    d.set("shuffle_tags", tags, f"{stats.tags_per_caption:.1f} comma-separated tags per caption "
          f"({'a tag list' if tags else 'sentences'}; shuffled from {rules.SHUFFLE_TAGS_FROM:g})")
    d.set("keep_tokens", 1, "the trigger word stays first")
    d.set("random_flip", task == "style", "mirrored copies for a style" if task == "style"
          else f"no mirroring for a {task}: text and asymmetric features would flip")
    d.set("cache_latents", True, "each image is encoded once; the VAE leaves the step")
    frozen = not (d["shuffle_tags"] or d["train_text_encoder"])
    d.set("cache_text_embeddings", frozen, "captions are fixed and the text encoder frozen" if frozen
          else "shuffled tags or a trained text encoder change the embeddings every step")
    d.set("gradient_checkpointing", False, "off until the memory budget needs it (it costs ~30% speed)", "prior")


def _schedule(d: Draft, stats: TuneStats) -> None:
    """Warm-up, checkpoints, validation and samples, from the total steps."""
    steps = d["max_steps"]
    d.set("lr_scheduler", "cosine", "cosine decay to zero (kohya's and diffusers' common choice)", "prior")
    d.set("lr_warmup_steps", round(rules.WARMUP_SHARE * steps), f"{rules.WARMUP_SHARE:.0%} of {steps} steps")
    every = max(10, round(steps / rules.CHECKPOINTS_PER_RUN / 10) * 10)
    d.set("checkpoint_every", every, f"{rules.CHECKPOINTS_PER_RUN} checkpoints per run")
    v = rules.VALIDATION
    validate = stats.num_images >= v["min_images"] and steps >= v["min_steps"]
    reason = (f"{v['split']:.0%} held out: {stats.num_images} images and {steps} steps are enough to see "
              "overfitting" if validate else
              f"no held-out split: it needs {v['min_images']} images and {v['min_steps']} steps")
    d.set("validation_split", v["split"] if validate else 0.0, reason)
    d.set("validation_every", every if validate else 0, "with each checkpoint" if validate else reason)
    d.set("early_stopping_window", v["window"] if validate else 0,
          f"stop after {v['window']} validations of rising loss" if validate else reason)
    samples = steps >= rules.SAMPLES_FROM_STEPS
    d.set("sample_every", every if samples else 0, "a sample grid with each checkpoint" if samples
          else f"no sample grids in a run under {rules.SAMPLES_FROM_STEPS} steps")


def _history(d: Draft, p: Prior, req: TuneRequest, task: str) -> Shift | None:
    if not req.history:
        return None
    near = nearest(req.stats.features(), task, req.history, req.history_neighbours)
    # Prodigy's rate is a multiplier of its own estimate: past runs' rates say nothing about it.
    values = {k: float(d[k]) for k in SHIFTED if k not in req.pinned
              and not (k == "learning_rate" and d["optimizer"] == "prodigy")}
    moved = shift(values, near, len(req.history))
    if moved.strength == 0:
        return moved
    cites = ", ".join(f"{e.run.run_id} ({e.run.score:+.3f})" for e in moved.evidence if e.weight > 0)
    why = f"moved {moved.strength:.0%} towards similar past runs that evaluated best: {cites}"
    lo, hi = rules.RANK_BOUNDS
    if "rank" in values:
        d.set("rank", max(lo, min(hi, rules.power_of_two(moved.values["rank"]))), why, "history")
    if "learning_rate" in values:
        d.set("learning_rate", _round_lr(moved.values["learning_rate"]), why, "history")
    if "max_steps" in values:
        steps = max(p.min_steps, min(p.max_steps, round(moved.values["max_steps"] / 10) * 10))
        d.set("max_steps", steps, why, "history")
    return moved


def _suggested_value(key: str, value: float, factor: float) -> float | int:
    if key == "rank":
        lo, hi = rules.RANK_BOUNDS
        return max(lo, min(hi, rules.power_of_two(value * factor)))
    if key == "max_steps":
        return max(10, round(value * factor / 10) * 10)
    return _round_lr(value * factor)


def _suggestion(d: Draft, req: TuneRequest) -> list[str]:
    """Apply the last rejection's factors to this run's values (not to pinned ones); returns the
    rationale's section on it."""
    s = req.suggestion
    if s is None:
        return []
    because = "; ".join(s.why) or "see its decision.json"
    done, skipped = [], []
    for key in TUNED:
        factor = s.changes.get(key)
        if factor is None:
            continue
        if key in req.pinned or (key == "learning_rate" and d["optimizer"] == "prodigy"):
            skipped.append(f"`{key}` x{factor:g} (pinned)" if key in req.pinned else
                           f"`{key}` x{factor:g} (Prodigy sets its own step size)")
            continue
        old = s.values.get(key, d[key])  # the value the rejected run trained with, when known
        new = d.set(key, _suggested_value(key, float(old), factor),
                    f"{old:g} (run {s.run_id}'s) x{factor:g}: {s.cite} it ({because})", "suggestion")
        done.append(f"`{key}` {old:g} -> {new:g}")
    if "more_data" in s.changes:
        skipped.append(f"more data x{s.changes['more_data']:g} (not the tuner's: raise crawl.max_images, "
                       "or let deploy.refine_attempts do it)")
    return ["", "## Last rejection", "",
            f"Run {s.run_id} of `{s.concept}` was rejected by the gate ({because}); its suggestion "
            f"({', '.join(f'{k} x{v:g}' for k, v in sorted(s.changes.items()))}) is applied to this run's values.",
            "", f"Applied: {', '.join(done) or 'nothing'}." + (f" Not applied: {', '.join(skipped)}." if skipped else "")]


def _fit(d: Draft, req: TuneRequest) -> tuple[TrainConfig, MemoryEstimate]:
    cfg = _validated(d)
    fit = fit_to_budget(cfg, req.family, req.gpu_gb, set(req.pinned))
    for key, value, why in fit.changes:
        d.set(key, value, f"{why}, to fit {req.gpu_gb:g} GiB", "memory")
    accum = fit.config.gradient_accumulation_steps
    if accum != cfg.gradient_accumulation_steps:
        d.set("gradient_accumulation_steps", accum, "raised with the lowered batch: the effective batch stays", "memory")
    return fit.config, fit.estimate


def _time_budget(d: Draft, req: TuneRequest, cfg: TrainConfig) -> None:
    if req.time_budget_h is None:
        return
    row = req.family
    base_s = req.seconds_per_step or row.seconds_per_step
    per_step = (base_s * (cfg.resolution / row.resolution) ** 2 * cfg.batch_size * cfg.gradient_accumulation_steps
                * (1.3 if cfg.gradient_checkpointing else 1.0))
    limit = max(1, int(req.time_budget_h * 3600 / per_step))
    if d["max_steps"] > limit:
        source = "tune.seconds_per_step" if req.seconds_per_step else f"the {row.name} assumption of {base_s:g} s/step"
        d.set("max_steps", limit, f"{req.time_budget_h:g} h at ~{per_step:.2f} s/step ({source}) allows {limit}",
              "budget")


def _validated(d: Draft) -> TrainConfig:
    try:
        return TrainConfig.model_validate({**d.base.model_dump(), **d.values})
    except ValidationError as e:
        first = e.errors()[0]
        raise ConfigError(f"the tuner made an invalid train.{'.'.join(map(str, first['loc']))}: {first['msg']} "
                          "(a pinned value may conflict; unpin it)") from None


def recommend_auto(req: TuneRequest) -> Recommendation:
    """The statistics-driven recommendation (strategy ``auto``)."""
    p = PRIORS[req.family.name]
    d = Draft(req.base, req.pinned)
    task, task_why = rules.task_of(req.stats, req.task_type)
    _core(d, p, req.family, req.stats, task)
    moved = _history(d, p, req, task)
    notes = _suggestion(d, req)
    _data_and_loss(d, p, req.stats, task, flow=_flow_matching(req.family.base_family))
    rank = d["rank"]
    d.set("alpha", rank * p.alpha_ratio, f"rank {rank} x {p.alpha_ratio:g} (the family's alpha/rank)", "prior")
    cfg, _ = _fit(d, req)
    _time_budget(d, req, cfg)
    _schedule(d, req.stats)
    cfg = _validated(d)
    for key in TrainConfig.model_fields:
        if key not in d.choices:
            d.choices[key] = Choice(getattr(cfg, key), "from the profile (not a tuned setting)", "profile")
    return Recommendation(cfg, d.choices, estimate(cfg, req.family), req, "auto", task, task_why, moved, notes)


def recommend_profile(req: TuneRequest) -> Recommendation:
    """Strategy ``profile``: the profile's config, only made feasible (a batch no larger than
    the dataset)."""
    cfg = req.base.model_copy(deep=True)
    choices = {k: Choice(getattr(cfg, k), "from the profile (strategy profile)", "profile") for k in TrainConfig.model_fields}
    if req.stats.num_images < cfg.batch_size:
        why = f"lowered from {cfg.batch_size} to {req.stats.num_images}, the number of training images"
        cfg.batch_size = max(1, req.stats.num_images)
        choices["batch_size"] = Choice(cfg.batch_size, why, "rule")
    return Recommendation(cfg, choices, estimate(cfg, req.family), req, "profile")


STRATEGIES = {"auto": recommend_auto, "profile": recommend_profile}


def request_for(cfg: FactoryConfig, stats: TuneStats, family: FamilyRow,
                history: Sequence[PastRun] = (), suggestion: PastSuggestion | None = None) -> TuneRequest:
    """The request a factory config makes: its train section as the base, its pins, its budget."""
    t = cfg.tune
    return TuneRequest(stats=stats, family=family, base=cfg.train, pinned=frozenset(t.pin), gpu_gb=t.gpu_gb,
                       time_budget_h=t.time_budget_h, seconds_per_step=t.seconds_per_step, task_type=t.task_type,
                       history=tuple(history), history_neighbours=t.history_neighbours, suggestion=suggestion)


def recommend(req: TuneRequest, strategy: str = "auto") -> Recommendation:
    return STRATEGIES[strategy](req)
