"""From embeddings to the EvalResult's metrics, scores and per-image numbers.

Base and LoRA samples come in the same (prompt, seed) order, so row ``i`` of each is the same
prompt and seed: every LoRA-minus-base difference is the adapter's effect alone. Fidelity,
diversity and copy risk are measured on the prompts that call the LoRA (its trigger word);
leakage on the class prompts without it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lora_factory.config import EvaluateConfig
from lora_factory.schemas import MetricPair

from . import metrics
from .prompts import TRIGGERED, EvalPrompt

FIDELITY_NAMES = {"clip": "clip_i", "dino": "dino"}  # the literature's names; others: <name>_fidelity


@dataclass
class EmbeddingSet:
    """One embedder's rows for the base images, the LoRA images and the training images."""

    name: str
    base: np.ndarray
    lora: np.ndarray
    reference: np.ndarray
    text: np.ndarray | None = None  # per sample: its prompt's text embedding (trigger removed)


@dataclass
class Scored:
    metrics: dict[str, MetricPair] = field(default_factory=dict)
    scores: dict[str, float | None] = field(default_factory=dict)
    per_sample: dict[str, dict[str, list[float]]] = field(default_factory=dict)  # metric -> side -> values
    copies: dict[str, metrics.CopyRisk] = field(default_factory=dict)  # embedder -> LoRA copy risk


def _mean(values: np.ndarray) -> float | None:
    return float(np.mean(values)) if len(values) else None


def _pair(base: np.ndarray, lora: np.ndarray) -> MetricPair:
    return MetricPair(base=_mean(base), lora=_mean(lora))


def score_set(es: EmbeddingSet, kinds: list[str], cfg: EvaluateConfig, out: Scored) -> None:
    """Add ``es``'s metrics to ``out``; ``kinds`` is each sample's prompt kind."""
    trig = np.array([k in TRIGGERED for k in kinds], dtype=bool)
    leak = np.array([k == "leakage" for k in kinds], dtype=bool)
    if len(es.reference):
        fid = FIDELITY_NAMES.get(es.name, f"{es.name}_fidelity")
        base_f, lora_f = metrics.fidelity(es.base, es.reference), metrics.fidelity(es.lora, es.reference)
        out.metrics[fid] = _pair(base_f[trig], lora_f[trig])
        out.per_sample[fid] = {"base": base_f.tolist(), "lora": lora_f.tolist()}
        copies = {side: metrics.copy_risk(emb[trig], es.reference, cfg.near_copy_threshold, cfg.exact_copy_threshold)
                  for side, emb in (("base", es.base), ("lora", es.lora))}
        out.metrics[f"copy_risk_{es.name}"] = MetricPair(base=copies["base"].share_near, lora=copies["lora"].share_near)
        out.copies[es.name] = copies["lora"]
    out.metrics[f"diversity_{es.name}"] = MetricPair(base=metrics.diversity(es.base[trig]),
                                                     lora=metrics.diversity(es.lora[trig]))
    if leak.any():
        drift = metrics.leakage(es.base[leak], es.lora[leak])
        out.metrics[f"leakage_{es.name}"] = MetricPair(base=0.0, lora=_mean(drift))
    if es.text is not None:
        base_t, lora_t = metrics.clip_t(es.base, es.text), metrics.clip_t(es.lora, es.text)
        out.metrics["clip_t"] = _pair(base_t[trig], lora_t[trig])
        out.per_sample["clip_t"] = {"base": base_t.tolist(), "lora": lora_t.tolist()}


def headline_scores(out: Scored, primary: str) -> dict[str, float | None]:
    """The SCORE_KEYS from the primary embedder (and CLIP-T), and the weighted overall score."""
    m = out.metrics
    fid = m.get(FIDELITY_NAMES.get(primary, f"{primary}_fidelity"), MetricPair())
    scores: dict[str, float | None] = {
        "fidelity_gain": fid.gain,
        "adherence_delta": m["clip_t"].gain if "clip_t" in m else None,
        "diversity": m.get(f"diversity_{primary}", MetricPair()).lora,
        "copy_risk": m.get(f"copy_risk_{primary}", MetricPair()).lora,
        "leakage": m.get(f"leakage_{primary}", MetricPair()).lora,
    }
    scores["overall_score"] = metrics.overall_score(scores)
    return scores


def per_prompt(prompts: list[EvalPrompt], prompt_index: list[int], out: Scored) -> list[dict[str, Any]]:
    """Each prompt's mean of every per-sample metric, per side."""
    idx = np.asarray(prompt_index)
    rows = []
    for i, p in enumerate(prompts):
        mask = idx == i
        row: dict[str, Any] = {"index": i, **p.as_dict()}
        for name, sides in out.per_sample.items():
            row[name] = {side: _mean(np.asarray(v)[mask]) for side, v in sides.items()}
        rows.append(row)
    return rows


def fidelity_gains(out: Scored) -> dict[str, float | None]:
    """LoRA minus base fidelity per embedding (clip_i, dino, pixels_fidelity, ...)."""
    names = set(FIDELITY_NAMES.values())
    return {k: m.gain for k, m in out.metrics.items() if k in names or k.endswith("_fidelity")}
