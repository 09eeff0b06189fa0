"""The training folder: images with ``.txt`` caption sidecars, an HF ``imagefolder``
``metadata.jsonl``, and a kohya (sd-scripts) dataset TOML.

Why all three: the same folder then trains in our trainer (metadata.jsonl), in sd-scripts
(``--dataset_config kohya_dataset.toml``, or the sidecars alone) and in the diffusers examples
(``load_dataset("imagefolder", data_dir=...)``, ``--caption_column text``), with nothing to convert.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from datatools.captions import TRIGGER
from lora_factory.config import TrainConfig

# The HF imagefolder convention, which our trainer and the diffusers examples read.
from training.dataset import METADATA_FILE

CAPTION_EXTENSION = ".txt"


def dataset_file_name(item: dict[str, Any]) -> str:
    """``<first 16 hex of the item id><original suffix>``: unique, stable, and short."""
    return f"{item['item_id'][:16]}{Path(item['image_path']).suffix.lower()}"


def metadata_row(label: dict[str, Any]) -> dict[str, Any]:
    """One ``metadata.jsonl`` line: the imagefolder columns (every row has the same keys and types)."""
    tags = [*(label.get("subject") or []), *(label.get("keywords") or [])]
    return {"file_name": label["file_name"], "text": label["caption"], "item_id": label["item_id"],
            "caption_source": label["caption_source"], "tags": tags, "license": label.get("license") or "unknown",
            "author": label.get("author") or "", "source_url": label.get("page_url") or ""}


def write_dataset(labels: list[dict[str, Any]], items: dict[str, dict[str, Any]], crawl_dir: Path,
                  dataset_dir: Path, extra_images: dict[str, Path] | None = None) -> None:
    """Copy each labelled image next to its caption sidecar and list them in metadata.jsonl
    (``extra_images``: item id -> file, for images that are not the crawl's: feedback samples)."""
    dataset_dir.mkdir(parents=True, exist_ok=True)
    extra = extra_images or {}
    lines = []
    for label in labels:
        iid = label["item_id"]
        src = extra[iid] if iid in extra else crawl_dir / items[iid]["image_path"]
        shutil.copyfile(src, dataset_dir / label["file_name"])
        (dataset_dir / f"{Path(label['file_name']).stem}{CAPTION_EXTENSION}").write_text(
            label["caption"] + "\n", encoding="utf-8")
        lines.append(json.dumps(metadata_row(label), ensure_ascii=False))
    (dataset_dir / METADATA_FILE).write_text("\n".join(lines) + ("\n" if lines else ""), encoding="utf-8")


def keep_tokens_for(template: str) -> int:
    """Comma-separated pieces up to the trigger word (kept in place when tags are shuffled)."""
    head, _, tail = template.partition(TRIGGER)
    return head.count(",") + 1 if "[caption]" in tail else 0


def kohya_dataset_config(train: TrainConfig, image_dir: str, template: str) -> dict[str, Any]:
    """An sd-scripts ``--dataset_config`` for the folder (DreamBooth-style subset with .txt
    captions), from the profile's training settings; only keys sd-scripts' schema accepts."""
    step = train.bucket_step or 64
    keep = keep_tokens_for(template)
    return {
        "#": ["sd-scripts dataset config: train_network.py --dataset_config <this file> (written by lora-factory)",
              "image_dir is where the label stage wrote this folder: change it if you move the folder"],
        "general": {"caption_extension": CAPTION_EXTENSION, "shuffle_caption": train.shuffle_tags,
                    "keep_tokens": keep},
        "datasets": [{
            "resolution": train.resolution,
            "batch_size": train.batch_size,
            "enable_bucket": train.aspect_buckets,
            "bucket_no_upscale": True,
            "bucket_reso_steps": step,
            "min_bucket_reso": train.min_bucket_side or step,
            "max_bucket_reso": train.max_bucket_side or 2 * train.resolution,
            "subsets": [{"image_dir": image_dir, "num_repeats": train.repeats,
                         "caption_extension": CAPTION_EXTENSION, "keep_tokens": keep,
                         "flip_aug": train.random_flip, "caption_dropout_rate": train.caption_dropout}],
        }],
    }
