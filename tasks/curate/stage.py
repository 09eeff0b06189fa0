"""The curate stage: every filter in order, one decision (reason, score, dup_of) per item.

``curate_items`` is pure (reads images, writes nothing) and fed by config and model callables,
so tests drive it with controlled inputs; ``run_curate`` reads the crawl and writes ``curate/``;
``curate_task`` is the thin Prefect wrapper that loads the profile's models and logs to MLflow.

Order of attribution (an item's reason is the first filter that rejects it): corrupt -> technical
quality -> text (ad, language, no text) -> off-topic / alignment -> exact, near and semantic
duplicates among the survivors (the best-ranked copy wins) -> balance caps.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from datatools import image_dedup
from datatools.dedup import hamming, resolve_chains
from datatools.features import FeatureBuilder, ImageFeatures, concat_features, extract_features
from lora_factory.catalog import (
    CRAWL_ITEMS,
    CURATE_DATASET,
    CURATE_DECISIONS,
    CURATE_EMBEDDINGS,
    CURATE_REJECTED,
    CURATE_REPORT,
    CURATE_STATS,
)
from lora_factory.catalog_formats import EmbeddingSet
from lora_factory.config import CurateConfig
from lora_factory.errors import StageError
from lora_factory.manifest import decision
from lora_factory.scaleout import Mapper, aligned_size, chunks

from .._text import candidate_text, raw_texts
from . import balance, text
from .alignment import clip_checks, text_topic_check
from .checks import Check
from .clip_embed import embed_image_files
from .quality import quality_checks
from .semantic import embed_texts, semantic_dedup
from .stats import dataset_stats, zero_shot_domain

STAGE = "curate"


@dataclass
class CurateModels:
    """What the model-based filters need; a missing model turns its filters off."""

    text_encode: Callable[[list[str]], np.ndarray] | None = None  # MiniLM: texts -> vectors
    text_ref: str | None = None
    clip: Any | None = None  # lora_factory.models.ClipScorer
    clip_ref: str | None = None
    # runtime.executor: dask: decode, hash and embed in batches on the cluster (None: in process)
    map_batches: Mapper | None = None
    cache_dir: Path | None = None  # where the workers load the models from
    batch_items: int = 64


@dataclass
class CurateResult:
    kept: list[dict[str, Any]]
    decisions: list[dict[str, Any]]
    scores: list[dict[str, Any]] = field(default_factory=list)  # every decoded item's measures
    embeddings: dict[str, tuple[list[str], np.ndarray]] = field(default_factory=dict)
    removed_by: dict[str, int] = field(default_factory=dict)  # filter name -> items it dropped
    filter_reasons: dict[str, str] = field(default_factory=dict)  # filter name -> its drop reason
    stats: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def dropped(self) -> list[dict[str, Any]]:
        return [d for d in self.decisions if d["decision"] == "drop"]

    def counts(self) -> dict[str, int]:
        c = Counter(d["reason"] for d in self.dropped)
        return {"kept": len(self.kept), "dropped": len(self.dropped), **{f"drop_{k}": v for k, v in c.items()}}


def quality_rank(items: list[dict[str, Any]], f: ImageFeatures) -> np.ndarray:
    """0 = best. Known licence first, then more pixels, less lossy encoding (estimated JPEG
    quality), sharper, then the item id: ties never depend on the order the crawl found items
    in, so two runs on the same images keep the same copies."""
    n = len(items)
    ids = np.argsort(np.argsort(np.array([it["item_id"] for it in items], dtype=str)))
    unknown = np.array([it.get("license") in (None, "", "unknown") for it in items])
    pixels = f.width.astype(np.float64) * f.height
    order = np.lexsort((ids, -f.laplacian_var, -np.round(f.encode_quality), -pixels, unknown)) if n else np.zeros(0, int)
    rank = np.empty(n, np.int64)
    rank[order] = np.arange(n)
    return rank


class _Decisions:
    """The per-item verdict arrays and the bookkeeping every filter shares."""

    def __init__(self, items: list[dict[str, Any]]) -> None:
        n = len(items)
        self.items = items
        self.alive = np.ones(n, bool)
        self.reason: list[str | None] = [None] * n
        self.score = np.full(n, np.nan)
        self.dup_of = np.full(n, -1, np.int64)
        self.detail: list[str | None] = [None] * n
        self.removed_by: Counter[str] = Counter()
        self.filter_reason: dict[str, str] = {}

    def apply(self, check: Check | None) -> None:
        if check is None:
            return
        hit = np.flatnonzero(check.drop & self.alive)
        for i in hit:
            self.reason[i] = check.reason
            self.score[i] = check.score[i]
            self.detail[i] = check.sentence(int(i))
        self.alive[hit] = False
        self.removed_by[check.name] += len(hit)
        self.filter_reason[check.name] = check.reason

    def apply_dups(self, name: str, reason: str, sub: np.ndarray, dup_of: np.ndarray, score: np.ndarray,
                   detail: str) -> None:
        """``dup_of``/``score`` are over ``sub`` (indices into the items); -1 keeps."""
        hit = np.flatnonzero(dup_of >= 0)
        for k in hit:
            i, rep = int(sub[k]), int(sub[dup_of[k]])
            self.reason[i], self.score[i], self.dup_of[i] = reason, score[k], rep
            self.detail[i] = detail.format(score=float(score[k]))
        self.alive[sub[hit]] = False
        self.removed_by[name] += len(hit)
        self.filter_reason[name] = reason


def measure_files(paths: list[Path], exact: bool, clip: Any | None, batch_size: int
                  ) -> tuple[ImageFeatures, np.ndarray | None]:
    """Decode every image once: pixel measures, and CLIP image embeddings when a model is given."""
    if clip is None:
        return extract_features(paths, exact), None
    fb = FeatureBuilder(len(paths))

    def on_decoded(i: int, img: Any, rotated: bool) -> None:
        fb.add(i, img, rotated, exact)

    emb, _ = embed_image_files(clip, paths, batch_size=batch_size, on_decoded=on_decoded, on_error=fb.fail)
    return fb.build(), emb


def _measure(paths: list[Path], cfg: CurateConfig, models: CurateModels) -> tuple[ImageFeatures, np.ndarray | None]:
    """In process, or in batches over ``models.map_batches`` (aligned to CLIP's batches)."""
    if models.map_batches is None:
        return measure_files(paths, cfg.exact_dedup, models.clip, cfg.clip_batch_size)
    from .batches import MeasureBatch, measure_batch

    clip_ref = models.clip_ref if models.clip is not None else None
    size = aligned_size(models.batch_items, cfg.clip_batch_size)
    specs = [MeasureBatch([str(paths[i]) for i in r], cfg.exact_dedup, clip_ref, str(models.cache_dir),
                          cfg.clip_batch_size) for r in chunks(len(paths), size)]
    parts = models.map_batches(measure_batch, specs)
    features = concat_features([f for f, _ in parts])
    if clip_ref is None:
        return features, None
    return features, np.concatenate([e for _, e in parts]) if parts else np.zeros((0, models.clip.dim), np.float32)


def curate_items(
    items: list[dict[str, Any]],
    crawl_dir: Path,
    cfg: CurateConfig,
    models: CurateModels | None = None,
    seed: int = 0,
) -> CurateResult:
    """Decide keep/drop for each crawled item. Pure: reads images, writes nothing."""
    models = models or CurateModels()
    n = len(items)
    ids = [it["item_id"] for it in items]
    f, img_emb = _measure([crawl_dir / it["image_path"] for it in items], cfg, models)
    rank = quality_rank(items, f)
    st = _Decisions(items)
    notes: list[str] = []

    # 1. Undecodable files, then technical quality.
    st.apply(Check("decode", "corrupt", ~f.ok, np.full(n, np.nan), "cannot decode the image file"))
    for i in np.flatnonzero(~f.ok):
        st.detail[i] = f.error[i]
    for check in quality_checks(f, cfg):
        st.apply(check)

    # 2. Text: cleaning, ads, language, presence.
    cleaned = [candidate_text(it) for it in items]
    captions = [c for c, _ in cleaned]
    if cfg.drop_ad_text:
        ad = np.array([any(text.is_ad_text(t) for t in raw_texts(it)) for it in items], bool)
        st.apply(Check("drop_ad_text", "ad", ad, np.where(ad, 1.0, 0.0), "page text marks it as an advertisement"))
    langs: list[str | None] = [None] * n
    if cfg.languages:
        judge = np.flatnonzero(st.alive & np.array([bool(c) for c in captions], bool))
        found, probs = text.detect_languages([captions[i] for i in judge], cfg.language_min_words)
        prob = np.full(n, np.nan)
        wrong = np.zeros(n, bool)
        allowed = {lang.lower() for lang in cfg.languages}
        for k, i in enumerate(judge):
            langs[i], prob[i] = found[k], probs[k]
            wrong[i] = found[k] is not None and found[k] not in allowed and probs[k] >= cfg.language_min_confidence
        st.apply(Check("languages", "wrong_language", wrong, prob,
                       "text language not in curate.languages (confidence {score:.2f})"))
    if cfg.require_text:
        none = np.array([not c for c in captions], bool)
        st.apply(Check("require_text", "no_caption", none, np.zeros(n), "no usable alt text, caption or title"))

    # 3. Embeddings of what is left, then topic and alignment checks.
    has_text = np.array([bool(c) for c in captions], bool)
    topics = [it.get("topic") for it in items]
    text_emb = clip_text = None
    text_topic = np.full(n, np.nan)
    if models.text_encode is not None:
        rows = np.flatnonzero(st.alive & has_text)
        topic_names = sorted({t for t in topics if t})
        vecs = embed_texts(models.text_encode, [captions[i] for i in rows] + topic_names)
        text_emb = np.zeros((n, vecs.shape[1]), np.float32)
        text_emb[rows] = vecs[: len(rows)]
        check, text_topic = text_topic_check(text_emb, vecs[len(rows):], cfg.min_text_topic)
        st.apply(check)
    clip_scores = {"clip_image_text": np.full(n, np.nan), "clip_image_topic": np.full(n, np.nan)}
    thresholds: dict[str, float | None] = {}
    if models.clip is not None and img_emb is not None:
        thresholds = dict(cfg.clip_thresholds.get(models.clip_ref or "", {}))
        if not thresholds:
            notes.append(f"no curate.clip_thresholds entry for {models.clip_ref!r}: CLIP alignment and "
                         "CLIP near-duplicate filters are off (embeddings still feed the statistics)")
        rows = np.flatnonzero(st.alive & has_text)
        topic_names = sorted({t for t in topics if t})
        prompts = [cfg.topic_prompt.format(topic=t) for t in topic_names]
        vecs = models.clip.embed_texts([captions[i] for i in rows] + prompts) if len(rows) + len(prompts) else None
        clip_text = np.zeros((n, models.clip.dim), np.float32)
        t_rows = np.zeros((0, models.clip.dim), np.float32)
        if vecs is not None:
            clip_text[rows] = vecs[: len(rows)]
            t_rows = vecs[len(rows):]
        checks, clip_scores = clip_checks(img_emb, clip_text, t_rows, thresholds, models.clip_ref or "clip")
        for check in checks:
            st.apply(check)

    # 4. Duplicates among the survivors: the best-ranked copy represents each group.
    log_aspect = np.log(np.maximum(f.width, 1) / np.maximum(f.height, 1))
    if cfg.exact_dedup:
        sub = np.flatnonzero(st.alive)
        d = image_dedup.exact_duplicates([f.pixel_sha256[i] for i in sub], rank[sub])
        st.apply_dups("exact_dedup", "exact_duplicate", sub, d, np.ones(len(sub)), "identical pixels to a kept image")
    if cfg.phash_max_distance is not None:
        sub = np.flatnonzero(st.alive)
        d, s = image_dedup.hash_near_duplicates(
            f.phash[sub], f.dhash[sub], log_aspect[sub], rank[sub], max_phash=cfg.phash_max_distance,
            max_dhash=cfg.dhash_max_distance, max_aspect_change=cfg.near_dup_max_aspect_change)
        st.apply_dups("phash_max_distance", "near_duplicate", sub, d, s,
                      "perceptual hash within {score:.0f} bits of a kept image")
    img_dup = thresholds.get("image_duplicate")
    if img_dup is not None and img_emb is not None:
        sub = np.flatnonzero(st.alive)
        d, s = image_dedup.clip_near_duplicates(img_emb[sub], rank[sub], img_dup,
                                                exact_max_items=cfg.dedup_exact_max_items,
                                                items_per_cluster=cfg.dedup_items_per_cluster, seed=seed)
        st.apply_dups("clip_image_duplicate", "near_duplicate", sub, d, s,
                      "CLIP image cosine {score:.3f} to a kept image")
    if cfg.text_dedup_threshold is not None and text_emb is not None:
        sub = np.flatnonzero(st.alive & has_text)
        check_pair = None
        if cfg.text_dedup_image_check:
            if img_dup is not None and img_emb is not None:
                e = img_emb[sub]

                # Same caption and clearly similar pictures (looser than the image-only
                # near-duplicate bar, since the captions already agree).
                def check_pair(i: np.ndarray, j: np.ndarray) -> np.ndarray:
                    return np.einsum("ij,ij->i", e[i], e[j]) >= img_dup * 0.9
            else:
                ph = f.phash[sub]

                def check_pair(i: np.ndarray, j: np.ndarray) -> np.ndarray:
                    return hamming(ph[i], ph[j]) <= cfg.text_dedup_max_phash
        d, s, method = semantic_dedup(text_emb[sub], rank[sub], cfg.text_dedup_threshold, pair_check=check_pair,
                                      exact_max_items=cfg.dedup_exact_max_items,
                                      items_per_cluster=cfg.dedup_items_per_cluster, seed=seed)
        notes.append(f"semantic text dedup over {len(sub)} texts: {method}")
        st.apply_dups("text_dedup_threshold", "semantic_duplicate", sub, d, s,
                      "caption cosine {score:.3f} to a kept image's (MiniLM)")

    # 5. Balance caps.
    if cfg.max_per_composition is not None:
        sub = np.flatnonzero(st.alive)
        over, size = balance.composition_cap(f.phash[sub], rank[sub], cfg.max_per_composition,
                                             cfg.composition_max_phash)
        st.apply(_sub_check("max_per_composition", "composition_cap", n, sub, over, size,
                            "one of {score:.0f} near-identical compositions; curate.max_per_composition={limit:.0f}",
                            cfg.max_per_composition))
    if cfg.max_source_share is not None:
        sub = np.flatnonzero(st.alive)
        over, share = balance.source_cap([balance.source_of(items[i]["page_url"]) for i in sub], rank[sub],
                                         cfg.max_source_share)
        st.apply(_sub_check("max_source_share", "source_cap", n, sub, over, share,
                            "its site has {score:.0%} of the pool; curate.max_source_share={limit}",
                            cfg.max_source_share))

    st.dup_of = resolve_chains(st.dup_of)
    return _result(items, ids, f, rank, st, captions, cleaned, langs, text_topic, clip_scores,
                   text_emb, clip_text, img_emb, models, cfg, notes)


def _sub_check(name: str, reason: str, n: int, sub: np.ndarray, over: np.ndarray, score: np.ndarray,
               detail: str, limit: float) -> Check:
    drop = np.zeros(n, bool)
    drop[sub[over]] = True
    full = np.full(n, np.nan)
    full[sub] = score
    return Check(name, reason, drop, full, detail, limit)


def _result(items, ids, f, rank, st, captions, cleaned, langs, text_topic, clip_scores,  # noqa: ANN001
            text_emb, clip_text, img_emb, models, cfg, notes) -> CurateResult:
    decisions, kept, scores = [], [], []
    for i, it in enumerate(items):
        measures = {
            "caption_text": captions[i], "caption_field": cleaned[i][1], "language": langs[i],
            "exif_rotated": bool(f.exif_rotated[i]),
            "sharpness": _num(f.laplacian_var[i]) if f.ok[i] else None,
            "brightness": _num(f.brightness[i]) if f.ok[i] else None,
            "contrast": _num(f.contrast[i]) if f.ok[i] else None,
            "entropy": _num(f.entropy[i]) if f.ok[i] else None,
            "phash": f.phash[i].tobytes().hex() if f.ok[i] else None,
            "text_topic": _num(text_topic[i]),
            "clip_image_text": _num(clip_scores["clip_image_text"][i]),
            "clip_image_topic": _num(clip_scores["clip_image_topic"][i]),
            "quality_rank": int(rank[i]),
        }
        scores.append({"item_id": ids[i], "decision": "keep" if st.alive[i] else "drop",
                       "reason": st.reason[i], "width": int(f.width[i]), "height": int(f.height[i]), **measures})
        if st.alive[i]:
            decisions.append(decision(ids[i], STAGE, True, score=_num(f.laplacian_var[i]),
                                      detail=f"quality rank {int(rank[i])} of {len(items)}"))
            row = {**it, "pixel_sha256": f.pixel_sha256[i], **measures}
            if f.ok[i]:
                row["width"], row["height"] = int(f.width[i]), int(f.height[i])
            kept.append(row)
        else:
            rep = ids[st.dup_of[i]] if st.dup_of[i] >= 0 else None
            decisions.append(decision(ids[i], STAGE, False, st.reason[i], score=_num(st.score[i]),
                                      dup_of=rep, detail=st.detail[i]))
    keep = np.flatnonzero(st.alive)
    embeddings: dict[str, tuple[list[str], np.ndarray]] = {}
    if img_emb is not None:
        ok = np.flatnonzero(f.ok)
        embeddings["clip_image"] = ([ids[i] for i in ok], img_emb[ok])
    for name, emb in (("text_minilm", text_emb), ("clip_text", clip_text)):
        if emb is not None:
            rows = np.flatnonzero(np.any(emb != 0, axis=1))
            embeddings[name] = ([ids[i] for i in rows], emb[rows])
    domain = None
    if models.clip is not None and img_emb is not None and len(keep) and cfg.domain_prompts:
        names = list(cfg.domain_prompts)
        domain = zero_shot_domain(img_emb[keep], models.clip.embed_texts([cfg.domain_prompts[k] for k in names]),
                                  names)
    stats = dataset_stats(
        width=f.width[keep], height=f.height[keep], captions=[captions[i] for i in keep],
        text_emb=text_emb[keep] if text_emb is not None else None,
        image_emb=img_emb[keep] if img_emb is not None else None, domain=domain,
        models={"text_embedder": models.text_ref, "clip_scorer": models.clip_ref},
    )
    stats["num_candidates"] = len(items)
    return CurateResult(kept, decisions, scores, embeddings, dict(st.removed_by), dict(st.filter_reason),
                        stats, notes)


def _num(x: float) -> float | None:
    x = float(x)
    return None if math.isnan(x) else x


def write_outputs(result: CurateResult, items: list[dict[str, Any]], crawl_dir: Path, out: Path,
                  cfg: CurateConfig | None = None) -> None:
    """Every curate output of the catalog: the kept items with their scores, decisions, the
    dropped items, embeddings (with their row order), stats and the report."""
    from .report import render_report

    CURATE_DATASET.write(out, result.kept)
    CURATE_DECISIONS.write(out, result.decisions)
    CURATE_REJECTED.write(out, result.dropped)
    CURATE_EMBEDDINGS.write(out, EmbeddingSet(result.embeddings, result.stats.get("models", {})))
    CURATE_STATS.write(out, result.stats)
    CURATE_REPORT.write(out, render_report(result, items, crawl_dir, cfg or CurateConfig()))


def load_embeddings(curate_dir: Path, name: str) -> tuple[list[str], np.ndarray]:
    """(item ids, rows) of a saved embedding, for later stages (no recomputation)."""
    return CURATE_EMBEDDINGS.read(curate_dir).vectors[name]


def run_curate(crawl_dir: Path, cfg: CurateConfig, out: Path, models: CurateModels | None = None,
               seed: int = 0) -> CurateResult:
    """The stage: read crawl outputs, decide, write ``curate/`` outputs; error if nothing is left."""
    items = CRAWL_ITEMS.read(crawl_dir).to_pylist()
    result = curate_items(items, crawl_dir, cfg, models, seed=seed)
    write_outputs(result, items, crawl_dir, out, cfg)
    if not result.kept:
        raise StageError(nothing_left_message(result, len(items)))
    return result


def nothing_left_message(result: CurateResult, n: int) -> str:
    """One line naming the filter (its reason and setting) that removed the most."""
    if not n or not result.removed_by:
        return "no images left after curation: no items came in; crawl more"
    name, count = max(result.removed_by.items(), key=lambda kv: kv[1])
    reason = result.filter_reasons.get(name, name)
    setting = f"curate.{name}" if name in CurateConfig.model_fields else name
    return (f"no images left after curation: '{reason}' removed {count} of {n} (filter {setting}); "
            "loosen that filter or crawl more")
