"""Label: captions for the curated images, written as a kohya/diffusers-ready dataset folder.

Skeleton captioning: the page's own words (alt text, else figure caption, else title text),
cleaned, prefixed with the trigger word. The captioner and LLM tagger extend ``caption_for``.
"""

from __future__ import annotations

import json
import shutil
import statistics
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lora_factory.catalog import (
    CRAWL_IMAGES,
    CURATE_DATASET,
    LABEL_CAPTION_STATS,
    LABEL_DATASET,
    LABEL_DECISIONS,
    LABEL_LABELS,
)
from lora_factory.config import LabelConfig
from lora_factory.context import RunRef, run_stage
from lora_factory.errors import StageError
from lora_factory.manifest import decision
from lora_factory.schemas import CaptionStats

# The Hugging Face imagefolder convention, which our trainer and the diffusers examples read.
from training.dataset import METADATA_FILE

from ._prefect import stage_task
from ._text import clean_text

STAGE = "label"


def caption_for(item: dict[str, Any], cfg: LabelConfig) -> tuple[str, str]:
    """(caption, source) for one item: the first usable text, trigger word first."""
    for source in ("alt_text", "figure_caption", "title_text"):
        text = clean_text(item.get(source), cfg.max_caption_words)
        if text:
            return f"{cfg.trigger_word}, {text}", source
    if item.get("topic"):
        return f"{cfg.trigger_word}, {item['topic']}", "topic"
    return "", "none"


@dataclass
class LabelResult:
    labels: list[dict[str, Any]]
    decisions: list[dict[str, Any]]


def label_items(items: list[dict[str, Any]], crawl_dir: Path, cfg: LabelConfig, out: Path) -> LabelResult:
    """Write the training folder (image + .txt pairs, metadata.jsonl) and return the labels."""
    dataset = LABEL_DATASET.at(out)
    dataset.mkdir(parents=True, exist_ok=True)
    labels, decisions, meta_lines = [], [], []
    for item in items:
        caption, source = caption_for(item, cfg)
        if not caption:
            decisions.append(decision(item["item_id"], STAGE, False, "no_caption",
                                      detail="no alt text, caption, title or topic"))
            continue
        src = crawl_dir / item["image_path"]
        file_name = f"{item['item_id'][:16]}{src.suffix.lower()}"
        shutil.copyfile(src, dataset / file_name)
        (dataset / f"{Path(file_name).stem}.txt").write_text(caption + "\n")
        meta_lines.append(json.dumps({"file_name": file_name, "text": caption, "item_id": item["item_id"]}))
        labels.append({"item_id": item["item_id"], "file_name": file_name, "caption": caption,
                       "caption_source": source})
        decisions.append(decision(item["item_id"], STAGE, True, detail=f"caption from {source}"))
    (dataset / METADATA_FILE).write_text("\n".join(meta_lines) + ("\n" if meta_lines else ""))
    return LabelResult(labels, decisions)


def caption_stats(labels: list[dict[str, Any]], cfg: LabelConfig) -> CaptionStats:
    """Coverage, length, sources and tag frequency of the captions (the trigger word aside)."""
    bodies = [_without_trigger(lab["caption"], cfg.trigger_word) for lab in labels]
    words = sorted(len(b.split()) for b in bodies)
    tags = Counter(t.strip().lower() for b in bodies for t in b.split(",") if t.strip())
    return CaptionStats(
        num_images=len(labels),
        captioned=sum(1 for w in words if w),
        coverage=sum(1 for w in words if w) / len(words) if words else 0.0,
        words_mean=sum(words) / len(words) if words else 0.0,
        words_median=float(statistics.median(words)) if words else 0.0,
        words_max=words[-1] if words else 0,
        sources=dict(Counter(lab["caption_source"] for lab in labels)),
        tag_frequency=dict(tags.most_common()),
        trigger_word=cfg.trigger_word,
    )


def _without_trigger(caption: str, trigger: str) -> str:
    head, sep, rest = caption.partition(",")
    return rest.strip() if sep and head.strip() == trigger else caption.strip()


def run_label(curate_dir: Path, crawl_dir: Path, cfg: LabelConfig, out: Path) -> LabelResult:
    items = CURATE_DATASET.read(curate_dir).to_pylist()
    result = label_items(items, crawl_dir, cfg, out)
    LABEL_LABELS.write(out, result.labels)
    LABEL_CAPTION_STATS.write(out, caption_stats(result.labels, cfg))
    LABEL_DECISIONS.write(out, result.decisions)
    if not result.labels:
        raise StageError("no image could be captioned: the pages had no alt text, captions or titles")
    return result


@stage_task(STAGE)
def label_task(ref: RunRef) -> dict[str, int]:
    with run_stage(ref, STAGE) as st:
        st.log_params(st.config.label.model_dump())
        result = run_label(st.input_dir(CURATE_DATASET), st.input_dir(CRAWL_IMAGES), st.config.label, st.out)
        sources: dict[str, int] = {}
        for lab in result.labels:
            sources[f"caption_from_{lab['caption_source']}"] = sources.get(f"caption_from_{lab['caption_source']}", 0) + 1
        st.log_metrics({"labelled": len(result.labels), **sources})
        st.log_artifact(st.output_path(LABEL_DATASET) / METADATA_FILE)
    return {"labelled": len(result.labels)}
