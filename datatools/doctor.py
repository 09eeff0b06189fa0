"""The dataset doctor: read a folder, measure every file (cached by content), check, score, report.

Why one function with the models passed in: the CLI (``lora-factory inspect``) and the label
stage's gate run the same diagnosis; each loads the CLIP scorer its own way (the profile's
reference, real loaders).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lora_factory.catalog import LABEL_DOCTOR, LABEL_DOCTOR_REPORT
from lora_factory.config import FactoryConfig
from lora_factory.models.refs import is_random_ref
from lora_factory.schemas import DoctorImage, DoctorReport

from .cache import MeasureCache
from .captions import TokenBudget
from .dashboard import render_dashboard
from .facts import DEFAULT_BUCKET_STEP, Facts, Settings, derive
from .findings import findings
from .measure import FileMeasure, file_sha256, measure_file
from .readers import Dataset
from .scores import scores

Progress = Callable[[int, int], None]  # (files done, files in all)
_BATCH = 32
_STOP = frozenset(["a", "an", "the", "of", "and", "in", "on", "with", "at", "to", "for", "by", "from", "is", "are", "his", "her", "its", "their", "this", "that"])


@dataclass
class Measured:
    measures: list[FileMeasure]
    emb: np.ndarray
    cache_hits: int


def measure_all(ds: Dataset, scorer: Any, cache: MeasureCache, progress: Progress | None = None) -> Measured:
    """Every sample's measures and CLIP embedding, from the cache when its content is known."""
    n = len(ds.samples)
    measures: list[FileMeasure] = []
    emb = np.zeros((n, scorer.dim), np.float32)
    hits = 0
    for start in range(0, n, _BATCH):
        todo: list[tuple[int, FileMeasure, Any]] = []
        for i in range(start, min(n, start + _BATCH)):
            sha = _sha(ds.samples[i].path)
            got = cache.get(sha) if sha else None
            if got is not None:
                hits += 1
                measures.append(got[0])
                if got[1] is not None:
                    emb[i] = got[1]
                continue
            fm, img = measure_file(ds.samples[i].path, sha) if sha else (FileMeasure("", error="cannot read the file"), None)
            measures.append(fm)
            todo.append((i, fm, img))
        pictures = [(i, fm, img) for i, fm, img in todo if img is not None]
        if pictures:
            emb[[i for i, _, _ in pictures]] = scorer.embed_images([img for _, _, img in pictures])
        for i, fm, img in todo:
            if fm.sha256:
                cache.put(fm, emb[i] if img is not None else None)
        if progress is not None:
            progress(min(n, start + _BATCH), n)
    return Measured(measures, emb, hits)


def _sha(path: Path) -> str:
    try:
        return file_sha256(path)
    except OSError:
        return ""


def tag_style(captions: list[str]) -> bool:
    """Are these comma-separated tags? Judged by the words per comma piece (at most 3 on average),
    not by the presence of commas: a trigger word placed before a sentence ("tok, a red fox in the
    snow") puts a comma in every natural-language caption."""
    pieces = [p for c in captions for p in c.split(",") if p.strip()]
    return bool(pieces) and sum(len(p.split()) for p in pieces) <= 3 * len(pieces)


def word_frequency(captions: list[str | None], top: int = 30) -> dict[str, int]:
    """Tag counts when captions are comma-separated tags, word counts otherwise (stop words out)."""
    caps = [c for c in captions if c]
    if tag_style(caps):
        terms = [t.strip().lower() for c in caps for t in c.split(",") if t.strip()]
    else:
        terms = [w for c in caps for w in re.findall(r"[\w'-]+", c.lower()) if w not in _STOP]
    return dict(Counter(terms).most_common(top))


def diagnose(ds: Dataset, concept: str, scorer: Any, clip_ref: str, budget: TokenBudget, settings: Settings,
             cache: MeasureCache, progress: Progress | None = None) -> DoctorReport:
    """The whole diagnosis of ``ds`` as a report (see ``lora_factory.schemas.DoctorReport``)."""
    got = measure_all(ds, scorer, cache, progress)
    concept_emb = scorer.embed_texts([concept])[0]
    ok = np.array([m.ok for m in got.measures], bool)
    cos = np.where(ok, got.emb @ concept_emb, np.nan)
    f = derive(Facts(ds, got.measures, got.emb, cos, budget, settings))
    found = findings(f)
    random = is_random_ref(clip_ref)
    note = ("CLIP model " + clip_ref + " has random weights: relevance, consistency, diversity and outliers "
            "are meaningless here; use a real CLIP model" if random else "")
    return DoctorReport(
        source=ds.source or str(ds.root), layout=ds.layout, concept=concept, trigger_word=settings.trigger,
        clip_model=clip_ref, scores_meaningful=not random, note=note,
        counts={"images": f.n, "decodable": int(ok.sum()), "captioned": sum(bool(s.caption) for s in ds.samples),
                "junk": len(ds.junk), "symlinks": len(ds.symlinks), "findings": len(found),
                "errors": sum(x.severity == "error" for x in found), "cache_hits": got.cache_hits,
                "images_with_repeats": sum(s.repeats for s in ds.samples)},
        scores=scores(f), findings=found, images=_images(f, found), duplicate_groups=_groups(f),
        word_frequency=word_frequency([s.caption for s in ds.samples]),
    )


def _images(f: Facts, found: list) -> list[DoctorImage]:
    flags: dict[str, list[str]] = {}
    for x in found:
        for r in x.files:
            flags.setdefault(r, []).append(x.code)
    return [DoctorImage(file=s.rel, sha256=m.sha256, ok=m.ok, caption=s.caption, width=m.width, height=m.height,
                        cluster=int(f.cluster[i]), x=round(float(f.xy[i, 0]), 4), y=round(float(f.xy[i, 1]), 4),
                        relevance=None if not m.ok else round(float(f.concept_cos[i]), 4), flags=flags.get(s.rel, []))
            for i, (s, m) in enumerate(zip(f.ds.samples, f.m, strict=True))]


def _groups(f: Facts) -> list[list[str]]:
    groups: dict[int, list[int]] = {}
    for i in range(f.n):
        root = f.exact_of[i] if f.exact_of[i] >= 0 else f.near_of[i]
        if root >= 0:
            while f.exact_of[root] >= 0:  # a near copy of an exact copy: the kept one
                root = f.exact_of[root]
            groups.setdefault(int(root), []).append(i)
    return [f.rel([k, *v]) for k, v in sorted(groups.items())]


def settings_for(cfg: FactoryConfig, trigger: str | None, batch_size: int | None = None) -> Settings:
    """The checks' settings from a profile: its doctor section and the training it will feed.
    ``batch_size`` None: the profile's; 1 leaves buckets unchecked (the label stage: the tuner
    picks the batch size after it, and train's gate checks the buckets against that)."""
    return Settings(cfg.doctor, resolution=cfg.train.resolution, bucket_step=cfg.train.bucket_step or DEFAULT_BUCKET_STEP,
                    batch_size=cfg.train.batch_size if batch_size is None else batch_size, trigger=trigger)


def write_report(report: DoctorReport, root: Path, out_dir: Path, thumbs: int) -> tuple[Path, Path]:
    """``doctor.json`` and ``doctor.html`` in ``out_dir`` (the names the label stage uses)."""
    return (LABEL_DOCTOR.write(out_dir, report),
            LABEL_DOCTOR_REPORT.write(out_dir, render_dashboard(report, root, thumbs)))
