"""The four 0-10 scores of a dataset, each a documented formula of its measures.

``clip01(x)`` is x clipped to [0, 1]; means are over decodable images unless said otherwise.

- relevance = 10 * mean clip01((cos(image, concept prompt) - lo) / (hi - lo)), CLIP cosines with
  ``doctor.relevance_cosine`` = (lo, hi);
- consistency = 10 * (0.6 * E + 0.4 * C): E = clip01((mean cos(image, set centroid) - 0.5) / 0.4)
  (style and composition coherence), C = 1 - clip01(mean |image mean RGB - set mean RGB| / 100)
  (colour coherence);
- diversity = 10 * (0.4 * S + 0.4 * B + 0.2 * U): S = clip01((1 - mean pairwise cosine) / 0.3)
  (embedding spread), B = entropy of the cluster sizes / log(k) (views, poses and lighting spread
  over clusters; 0 with one cluster), U = share of images that are no copy of another;
- quality = 10 * mean over all images (0 for undecodable ones) of the mean of: resolution
  clip01(pixels / resolution²), sharpness clip01(log(1 + Laplacian var) / log(201)), noise
  1 - clip01((sigma - 3) / 12), exposure 1 - clip01((dark + blown share - 0.1) / 0.5), compression
  clip01((JPEG quality - 50) / 40).
"""

from __future__ import annotations

import numpy as np

from lora_factory.schemas import DoctorScore

from .facts import Facts

FORMULAS = {
    "relevance": "10 * mean clip01((cos(image, concept) - lo) / (hi - lo))",
    "consistency": "10 * (0.6 * clip01((mean cos(image, centroid) - 0.5) / 0.4) + 0.4 * (1 - clip01(mean RGB distance / 100)))",
    "diversity": "10 * (0.4 * clip01((1 - mean pairwise cos) / 0.3) + 0.4 * cluster entropy / log k + 0.2 * unique share)",
    "quality": "10 * mean(resolution, sharpness, noise, exposure, compression) per image, 0 if undecodable",
}


def clip01(x: np.ndarray | float) -> np.ndarray:
    return np.clip(x, 0.0, 1.0)


def _score(name: str, value: float, parts: dict[str, float]) -> DoctorScore:
    return DoctorScore(value=round(float(np.clip(value, 0, 10)), 2), formula=FORMULAS[name],
                       parts={k: round(float(v), 4) for k, v in parts.items()})


def _mean(x: np.ndarray) -> float:
    return float(np.mean(x)) if len(x) else 0.0


def relevance(f: Facts) -> DoctorScore:
    lo, hi = f.s.doctor.relevance_cosine
    cos = f.concept_cos[f.ok]
    part = _mean(clip01((cos - lo) / max(hi - lo, 1e-6)))
    return _score("relevance", 10 * part, {"mean_cosine": _mean(cos), "mapped": part})


def consistency(f: Facts) -> DoctorScore:
    e = f.emb[f.ok]
    if not len(e):
        return _score("consistency", 0, {})
    centroid = e.mean(axis=0)
    centroid /= max(np.linalg.norm(centroid), 1e-12)
    to_centre = _mean(e @ centroid)
    rgb = np.array([m.mean_rgb for m in f.m if m.ok])
    spread = _mean(np.linalg.norm(rgb - rgb.mean(axis=0), axis=1))
    emb_part = float(clip01((to_centre - 0.5) / 0.4))
    colour_part = 1 - float(clip01(spread / 100))
    return _score("consistency", 10 * (0.6 * emb_part + 0.4 * colour_part),
                  {"mean_cos_to_centroid": to_centre, "embedding": emb_part, "rgb_spread": spread, "colour": colour_part})


def diversity(f: Facts) -> DoctorScore:
    e = f.emb[f.ok]
    n = len(e)
    if n < 2:
        return _score("diversity", 0, {"images": n})
    s = e.sum(axis=0)
    mean_pair = float((s @ s - n) / (n * (n - 1)))  # mean off-diagonal cosine, without n x n
    counts = np.bincount(f.cluster[f.ok])
    counts = counts[counts > 0]
    p = counts / counts.sum()
    balance = float(-(p * np.log(p)).sum() / np.log(len(p))) if len(p) > 1 else 0.0
    unique = float(np.mean((f.exact_of[f.ok] < 0) & (f.near_of[f.ok] < 0)))
    spread = float(clip01((1 - mean_pair) / 0.3))
    return _score("diversity", 10 * (0.4 * spread + 0.4 * balance + 0.2 * unique),
                  {"mean_pairwise_cos": mean_pair, "spread": spread, "clusters": len(p),
                   "cluster_balance": balance, "unique_share": unique})


def quality(f: Facts) -> DoctorScore:
    per = np.zeros(f.n)
    parts = {k: np.zeros(f.n) for k in ("resolution", "sharpness", "noise", "exposure", "compression")}
    for i, m in enumerate(f.m):
        if not m.ok:
            continue
        q = {
            "resolution": clip01(m.width * m.height / f.s.resolution ** 2),
            "sharpness": clip01(np.log1p(m.laplacian_var) / np.log(201)),
            "noise": 1 - clip01((m.noise - 3) / 12),
            "exposure": 1 - clip01((m.dark_fraction + m.bright_fraction - 0.1) / 0.5),
            "compression": clip01((m.encode_quality - 50) / 40),
        }
        for k, v in q.items():
            parts[k][i] = v
        per[i] = np.mean(list(q.values()))
    ok = f.ok if f.ok.any() else np.ones(f.n, bool)
    return _score("quality", 10 * _mean(per), {k: _mean(v[ok]) for k, v in parts.items()})


def scores(f: Facts) -> dict[str, DoctorScore]:
    return {"relevance": relevance(f), "consistency": consistency(f), "diversity": diversity(f), "quality": quality(f)}
