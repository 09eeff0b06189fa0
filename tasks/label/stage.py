"""The label stage: licence policy, caption candidates, CLIP re-ranking, tags, formatting, review.

``label_items`` is pure (reads images, writes nothing) and fed by config and a ``LabelModels``
of callables, so tests drive it with controlled inputs; ``run_label`` reads curate's dataset and
writes ``label/``; ``label_task`` (``task.py``) loads the profile's models and logs to MLflow.

Order: licence policy (nothing refused is even captioned) -> candidates (page texts, captioner,
VLM) -> re-ranking by CLIP -> tags and the concept summary -> caption formatting (style,
traits, trigger word once, token budget) -> the reviewer's edits -> outputs.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from datatools.captions import TokenBudget, fit_human, format_caption, word_budget
from lora_factory.catalog import (
    CRAWL_STATS,
    CURATE_DATASET,
    LABEL_CAPTION_STATS,
    LABEL_CAPTIONS,
    LABEL_DATASET,
    LABEL_DATASHEET,
    LABEL_DECISIONS,
    LABEL_KOHYA_TOML,
    LABEL_LABELS,
    LABEL_REPORT,
)
from lora_factory.config import FactoryConfig, LabelConfig
from lora_factory.errors import StageError
from lora_factory.llm_client import ChatClient
from lora_factory.manifest import decision
from lora_factory.schemas import CaptionStats

from .batches import RERANK_BATCH, LabelBatches
from .candidates import (
    Candidate,
    ItemCandidates,
    add_model_candidates,
    add_topic_fallback,
    order_by_sources,
    page_candidates,
)
from .captioning import captioner_captions, vlm_captions
from .datasheet import render_datasheet
from .export import dataset_file_name, kohya_dataset_config, write_dataset
from .feedback import feedback_labels
from .keywords import KeywordTagger
from .licenses import PolicyResult, apply_license_policy
from .report import render_report
from .rerank import pick, score_candidates
from .review import HUMAN, REVIEW_DROP, Edit, read_review, review_rows
from .stats import caption_stats
from .tagging import Chat, TagInput, TagStats, summarise, tag_items

STAGE = "label"


@dataclass
class LabelModels:
    """What the model-based steps need; a missing one turns its step off."""

    captioner: Any | None = None  # lora_factory.models.Captioner
    clip: Any | None = None  # lora_factory.models.ClipScorer: re-ranking
    budget: TokenBudget | None = None  # None: words stand in for tokens (75)
    tag_chat: Chat | None = None  # the LLM tagger (OpenAI-compatible or local)
    tag_source: str = "none"  # recorded as each image's tag_source
    tag_workers: int = 1
    keyword_tagger: KeywordTagger | None = None  # the offline fallback
    vlm: ChatClient | None = None
    notes: list[str] = field(default_factory=list)  # said at the top of the report and in the log
    batches: LabelBatches | None = None  # runtime.executor: dask: captions and CLIP rows on the cluster


@dataclass
class LabelResult:
    labels: list[dict[str, Any]]
    decisions: list[dict[str, Any]]
    policy: PolicyResult
    stats: CaptionStats
    tag_stats: TagStats
    timings: dict[str, float] = field(default_factory=dict)  # seconds per step
    notes: list[str] = field(default_factory=list)
    reviewed_out: list[dict[str, Any]] = field(default_factory=list)  # labels a reviewer set to keep = no
    feedback_images: dict[str, Path] = field(default_factory=dict)  # item id -> image, of feedback samples

    @property
    def dropped(self) -> list[dict[str, Any]]:
        return [d for d in self.decisions if d["decision"] == "drop"]


@contextmanager
def _timed(timings: dict[str, float], step: str) -> Iterator[None]:
    started = time.perf_counter()
    try:
        yield
    finally:
        timings[step] = timings.get(step, 0.0) + time.perf_counter() - started


def embed_image_files(clip: Any, paths: list[Path], batch_size: int = RERANK_BATCH) -> np.ndarray:
    """CLIP rows for image files, opened a batch at a time."""
    from PIL import Image

    rows = []
    for start in range(0, len(paths), batch_size):
        images = []
        for path in paths[start : start + batch_size]:
            with Image.open(path) as im:
                images.append(im.convert("RGB"))
        rows.append(clip.embed_images(images, batch_size=batch_size))
    return np.concatenate(rows) if rows else np.zeros((0, 1), np.float32)


def gather_candidates(items: list[dict[str, Any]], crawl_dir: Path, cfg: LabelConfig, models: LabelModels,
                      timings: dict[str, float]) -> list[ItemCandidates]:
    """Every item's candidates, scored by CLIP when re-ranking is on."""
    ics = page_candidates(items, cfg.caption_sources, cfg.max_caption_words)
    paths = [crawl_dir / it["image_path"] for it in items]
    if "captioner" in cfg.caption_sources and (models.captioner is not None or models.batches is not None) and items:
        with _timed(timings, "captioner"):
            texts = (models.batches.captions(paths, cfg.captioner_batch_size, cfg.captioner_max_new_tokens)
                     if models.batches else captioner_captions(paths, models.captioner, cfg.captioner_batch_size,
                                                               cfg.captioner_max_new_tokens))
        add_model_candidates(ics, "captioner", list(texts), cfg.max_caption_words)
    if "vlm" in cfg.caption_sources and models.vlm is not None and items:
        with _timed(timings, "vlm"):
            add_model_candidates(ics, "vlm", vlm_captions(paths, models.vlm, cfg.vlm_prompt), cfg.max_caption_words)
    for ic in ics:
        order_by_sources(ic, cfg.caption_sources)
        add_topic_fallback(ic, cfg.max_caption_words)
    if cfg.rerank and models.clip is not None:
        with _timed(timings, "rerank"):
            scored = [ic for ic in ics if ic.candidates]
            image_paths = [crawl_dir / ic.item["image_path"] for ic in scored]
            emb = (models.batches.image_embeddings(image_paths) if models.batches
                   else embed_image_files(models.clip, image_paths))
            score_candidates(scored, emb, models.clip.embed_texts)
    return ics


def tag_body(tags: dict[str, Any]) -> str:
    """A tags-style caption body: subjects, keywords, medium, style, movement (no repeats)."""
    words = [*(tags.get("subject") or []), *(tags.get("keywords") or []),
             *(tags.get(k) for k in ("medium", "style", "movement"))]
    return ", ".join(dict.fromkeys(w for w in words if w and w != "none"))


def _label_row(ic: ItemCandidates, winner: Candidate, tags: dict[str, Any], formatted: Any) -> dict[str, Any]:
    it = ic.item
    return {"item_id": it["item_id"], "file_name": dataset_file_name(it), "caption": formatted.caption,
            "caption_source": winner.source, "machine_caption": formatted.caption, "caption_score": winner.score,
            "caption_tokens": formatted.tokens, "trimmed": formatted.trimmed,
            "candidates": [c.row() for c in ic.candidates], **tags, "license": it.get("license"),
            "author": it.get("author"), "page_url": it.get("page_url")}


def apply_edit(label: dict[str, Any], edit: Edit | None, cfg: LabelConfig, budget: TokenBudget) -> dict[str, Any] | None:
    """The label after the reviewer's edit: their caption (source human) if they changed it,
    ``None`` if they set keep to no, else unchanged."""
    if edit is None:
        return label
    if not edit.keep:
        return None
    if not edit.changed(label["machine_caption"]):
        return label
    fitted = fit_human(edit.caption, cfg.trigger_word, cfg.template, cfg.caption_style, budget)
    return {**label, "caption": fitted.caption, "caption_source": HUMAN, "caption_tokens": fitted.tokens,
            "trimmed": fitted.trimmed}


def _tag_inputs(ics: list[ItemCandidates]) -> list[TagInput]:
    """What the tagger reads per image: its candidates, without the likely hallucinations."""
    return [TagInput(str(i), ic.item.get("topic"), [(c.source, c.text) for c in ic.candidates if not c.hallucination])
            for i, ic in enumerate(ics)]


def label_items(items: list[dict[str, Any]], crawl_dir: Path, cfg: LabelConfig, models: LabelModels | None = None,
                topics: list[str] | None = None) -> LabelResult:
    """Labels and keep/drop decisions for curated ``items`` (pure: writes nothing)."""
    models = models or LabelModels()
    budget = models.budget or word_budget(75)
    timings: dict[str, float] = {}
    edits = read_review(cfg.review_file, {it["item_id"] for it in items}) if cfg.review_file else {}
    policy = apply_license_policy(items, STAGE, cfg)
    decisions = list(policy.decisions)
    ics = gather_candidates(policy.kept, crawl_dir, cfg, models, timings)
    rescued = [ic for ic in ics if not ic.candidates and edits.get(ic.item["item_id"], Edit("", False, "")).keep]
    for ic in rescued:  # nothing described it, but a person did
        ic.candidates.append(Candidate(HUMAN, edits[ic.item["item_id"]].caption))
    for ic in ics:
        if not ic.candidates:
            decisions.append(decision(ic.item["item_id"], STAGE, False, "no_caption",
                                      detail="no alt text, caption, title, model caption or topic"))
    ics = [ic for ic in ics if ic.candidates]
    winners = [pick(ic, cfg.hallucination_margin) for ic in ics]
    with _timed(timings, "tagging"):
        tags, tag_stats = tag_items(_tag_inputs(ics), models.tag_chat, models.tag_source, cfg,
                                    models.keyword_tagger, models.tag_workers)
        summary, found_traits, _ = summarise(_tag_inputs(ics), [w.text for w in winners], tags, topics or [],
                                             models.tag_chat, cfg, tag_stats)
    traits = [*cfg.traits, *(found_traits if cfg.traits_from_summary else [])]
    labels, reviewed_out = [], []
    with _timed(timings, "formatting"):
        for ic, winner, tag in zip(ics, winners, tags, strict=True):
            body = tag_body(tag) if cfg.caption_style == "tags" and tag_body(tag) else winner.text
            formatted = format_caption(body, cfg.trigger_word, cfg.template, cfg.caption_style, budget, traits)
            machine = _label_row(ic, winner, tag, formatted)
            label = apply_edit(machine, edits.get(ic.item["item_id"]), cfg, budget)
            if label is None:
                reviewed_out.append({**machine, "caption": edits[ic.item["item_id"]].caption or machine["caption"]})
                decisions.append(decision(ic.item["item_id"], STAGE, False, REVIEW_DROP, detail="keep = no in the review file"))
                continue
            labels.append(label)
            decisions.append(decision(ic.item["item_id"], STAGE, True, detail=f"caption from {label['caption_source']}"))
    fb = feedback_labels(cfg, budget, STAGE, {lab["item_id"] for lab in labels})
    labels += fb.labels
    decisions += fb.decisions
    counts = {**tag_stats.as_dict(), **(models.tag_chat.counts() if hasattr(models.tag_chat, 'counts') else {})}
    stats = caption_stats(labels, cfg, token_budget=budget.limit, summary=summary, traits=traits, tagger=counts)
    return LabelResult(labels, decisions, policy, stats, tag_stats, timings, list(models.notes), reviewed_out,
                       fb.images)


def write_outputs(result: LabelResult, items: dict[str, dict[str, Any]], crawl_dir: Path, out: Path,
                  cfg: FactoryConfig, title: str, image_dir: str) -> None:
    """Everything under ``label/`` (the dataset folder first: the report reads its images)."""
    write_dataset(result.labels, items, crawl_dir, LABEL_DATASET.at(out), result.feedback_images)
    LABEL_KOHYA_TOML.write(out, kohya_dataset_config(cfg.train, image_dir, cfg.label.template))
    LABEL_LABELS.write(out, result.labels)
    LABEL_CAPTION_STATS.write(out, result.stats)
    LABEL_DECISIONS.write(out, result.decisions)
    LABEL_CAPTIONS.write(out, review_rows(result.labels) + review_rows(result.reviewed_out, keep="no"))
    crawl_stats = CRAWL_STATS.read(crawl_dir) if CRAWL_STATS.exists(crawl_dir) else {}
    LABEL_DATASHEET.write(out, render_datasheet(
        title, result.labels, result.policy, cfg.label, crawl_stats, honour_noai=cfg.crawl.honour_noai,
        obey_robots=cfg.crawl.obey_robots, summary=result.stats.concept_summary))
    LABEL_REPORT.write(out, render_report(result.labels, result.dropped, items, crawl_dir, LABEL_DATASET.at(out),
                                          result.stats, result.notes, cfg.label.report_thumbnail_px))


def run_label(curate_dir: Path, crawl_dir: Path, out: Path, cfg: FactoryConfig, models: LabelModels | None = None,
              topics: list[str] | None = None, image_dir: str | None = None) -> LabelResult:
    """Label curate's dataset into ``out``. ``image_dir``: where the dataset folder will live
    (written into the kohya TOML; default: where it is written now)."""
    items = CURATE_DATASET.read(curate_dir).to_pylist()
    result = label_items(items, crawl_dir, cfg.label, models, topics)
    by_id = {it["item_id"]: it for it in items}
    title = ", ".join(topics or sorted({it.get("topic") or "" for it in items} - {""})) or "dataset"
    write_outputs(result, by_id, crawl_dir, out, cfg, title, image_dir or str(LABEL_DATASET.at(out).resolve()))
    if not result.labels:
        reasons = ", ".join(sorted({d["reason"] for d in result.dropped})) or "none"
        raise StageError(f"no image left to train on after labelling ({len(items)} curated; dropped for: {reasons}): "
                         "see label/report.html; label.allowed_licenses and label.allow_unknown_license decide licences")
    return result
