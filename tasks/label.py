"""Label: captions for the curated images, written as a kohya/diffusers-ready dataset folder.

Skeleton captioning: the page's own words (alt text, else figure caption, else title text),
cleaned, prefixed with the trigger word. The captioner and LLM tagger extend ``caption_for``.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from lora_factory.config import LabelConfig
from lora_factory.context import RunRef, run_stage
from lora_factory.errors import StageError
from lora_factory.manifest import decision, read_table, write_decisions, write_table

from ._prefect import stage_task
from .curate import DATASET_SCHEMA
from .curate.text import clean_text

STAGE = "label"
LABELS_SCHEMA = pa.schema(
    [
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("file_name", pa.string(), nullable=False),
        pa.field("caption", pa.string(), nullable=False),
        pa.field("caption_source", pa.string(), nullable=False),
    ]
)

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
    """Write ``out/dataset/`` (image + .txt pairs, metadata.jsonl) and return the labels."""
    dataset = out / "dataset"
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
    (dataset / "metadata.jsonl").write_text("\n".join(meta_lines) + ("\n" if meta_lines else ""))
    return LabelResult(labels, decisions)


def run_label(curate_dir: Path, crawl_dir: Path, cfg: LabelConfig, out: Path) -> LabelResult:
    items = read_table(curate_dir / "dataset.parquet", DATASET_SCHEMA).to_pylist()
    result = label_items(items, crawl_dir, cfg, out)
    write_table(out / "labels.parquet", result.labels, LABELS_SCHEMA)
    write_decisions(out / "decisions.parquet", result.decisions)
    if not result.labels:
        raise StageError("no image could be captioned: the pages had no alt text, captions or titles")
    return result


@stage_task(STAGE)
def label_task(ref: RunRef) -> dict[str, int]:
    with run_stage(ref, STAGE) as st:
        st.log_params(st.config.label.model_dump())
        result = run_label(st.input("curate"), st.input("crawl"), st.config.label, st.out)
        sources: dict[str, int] = {}
        for lab in result.labels:
            sources[f"caption_from_{lab['caption_source']}"] = sources.get(f"caption_from_{lab['caption_source']}", 0) + 1
        st.log_metrics({"labelled": len(result.labels), **sources})
        st.log_artifact(st.out / "dataset" / "metadata.jsonl")
    return {"labelled": len(result.labels)}
