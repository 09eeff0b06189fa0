"""The bounded auto-refine loop's decision: after a rejection, whether to start another run and
with which settings. A pure function of the rejected run's record, so the loop is tested without
running it; ``flows/factory.py`` acts on it.

What an attempt changes, from the gate's suggestion (``deploy.suggest``) and failed checks:

- longer/shorter training, another rank or learning rate: ``train.<key>`` = the value the rejected
  run trained with x the factor (set explicitly, so it holds even where the profile pins the key);
- more data: ``crawl.max_images`` x the factor (capped by ``deploy.refine.max_images_cap``);
- stricter curation when the candidate copied its images or its outputs look alike
  (``copy_risk`` / ``diversity`` failed): tighter near-duplicate and semantic-duplicate thresholds.

It stops after ``deploy.refine.attempts`` extra runs, on a promotion, or when the gate has nothing
to suggest (another run would repeat the rejected one).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from lora_factory.config import FactoryConfig

TRAIN_KEYS = ("max_steps", "rank", "learning_rate")
STRICTER_ON = ("copy_risk", "diversity")
PHASH_STEP, TEXT_DEDUP_STEP, TEXT_DEDUP_FLOOR = 4, 0.04, 0.8


@dataclass(frozen=True)
class RefineStep:
    attempt: int  # the next run's attempt number (1 for the first refinement)
    overrides: dict[str, Any] = field(default_factory=dict)
    why: list[str] = field(default_factory=list)


def _train_value(key: str, value: float, factor: float) -> float | int:
    if key == "rank":
        return max(1, 2 ** round(math.log2(max(1.0, value * factor))))
    if key == "max_steps":
        return max(1, math.floor(value * factor + 0.5))  # half up: 2 x1.25 is 3 steps, not 2
    return float(f"{value * factor:.2g}")


def _stricter(cfg: FactoryConfig) -> dict[str, Any]:
    c = cfg.curate
    out: dict[str, Any] = {}
    if c.phash_max_distance is not None and c.phash_max_distance > 0:
        out["curate.phash_max_distance"] = max(0, c.phash_max_distance - PHASH_STEP)
    if c.text_dedup_threshold is not None and c.text_dedup_threshold > TEXT_DEDUP_FLOOR:
        out["curate.text_dedup_threshold"] = round(max(TEXT_DEDUP_FLOOR, c.text_dedup_threshold - TEXT_DEDUP_STEP), 4)
    return out


def next_attempt(record: Mapping[str, Any], trained: Mapping[str, Any], cfg: FactoryConfig,
                 run_id: str) -> RefineStep | None:
    """The next attempt after the run ``run_id`` whose deploy wrote ``record`` (decision.json)
    and that trained with ``trained`` (its train_config); None: stop."""
    rc = cfg.deploy.refine
    if rc.attempts == 0 or record.get("verdict") != "rejected" or rc.attempt >= rc.attempts:
        return None
    changes = dict((record.get("suggestion") or {}).get("changes") or {})
    failed = {c["name"] for c in record.get("checks") or [] if not c.get("passed") and not c.get("skipped")}
    out: dict[str, Any] = {}
    why = [f"attempt {rc.attempt + 1} of {rc.attempts} after run {run_id} was rejected ({record.get('reason', '')})"]
    for key in TRAIN_KEYS:
        if key in changes and trained.get(key) is not None:
            out[f"train.{key}"] = _train_value(key, float(trained[key]), float(changes[key]))
            why.append(f"train.{key} {trained[key]} x{changes[key]:g}")
    if "more_data" in changes:
        images = min(rc.max_images_cap, math.ceil(cfg.crawl.max_images * float(changes["more_data"])))
        if images > cfg.crawl.max_images:
            out["crawl.max_images"] = images
            why.append(f"crawl.max_images {cfg.crawl.max_images} -> {images}")
    if failed & set(STRICTER_ON):
        strict = _stricter(cfg)
        out.update(strict)
        why += [f"stricter curation: {k} -> {v}" for k, v in strict.items()]
    if not out:
        return None  # nothing would differ: another run would repeat this one
    first = rc.of or run_id
    out.update({"deploy.refine.of": first, "deploy.refine.attempt": rc.attempt + 1})
    return RefineStep(rc.attempt + 1, out, why)
