"""Export targets for a released LoRA: the store (local or S3), a ComfyUI / A1111 ``models/loras``
folder, and on request a production variant (an fp16 copy, or the LoRA fused into the base).

Why a separate ``models/loras`` copy: those UIs load the kohya file by its file name and show its
``modelspec.*`` / ``ss_*`` metadata (title, trigger phrase, tag frequency) and a ``<name>.json``
sidecar (A1111's "activation text"); the run directory's names are not theirs.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

from lora_factory.catalog import DEPLOY_DECISION
from lora_factory.errors import FactoryError
from lora_factory.storage import Store
from training.export_kohya import KOHYA_WEIGHT_NAME, stamp_metadata
from training.families import family_for
from training.lora import LORA_WEIGHT_NAME


class ExportError(FactoryError):
    """An export target cannot be written (no kohya file, folder not writable...)."""


def modelspec(family: str, title: str, trigger_word: str, resolution: int | None, licence: str,
              description: str = "") -> dict[str, str]:
    """The ``modelspec.*`` keys A1111 and ComfyUI read from a LoRA file (all strings); the
    architecture and implementation are the family's, as the trained file has them."""
    fam = family_for(family)
    meta = {"modelspec.sai_model_spec": "1.0.0", "modelspec.architecture": fam.modelspec_architecture,
            "modelspec.implementation": fam.modelspec_implementation, "modelspec.title": title,
            "modelspec.author": "lora-factory", "modelspec.date": datetime.now(UTC).strftime("%Y-%m-%d"),
            "modelspec.license": licence}
    if trigger_word:
        meta["modelspec.trigger_phrase"] = trigger_word
    if resolution:
        meta["modelspec.resolution"] = f"{resolution}x{resolution}"
    if description:
        meta["modelspec.description"] = description
    return meta


def to_loras_folder(lora_dir: Path, dest: Path, name: str, family: str, meta: Mapping[str, str],
                    trigger_word: str) -> Path:
    """Copy the kohya file to ``dest/<name>.safetensors`` with ``meta`` added (the training's
    ``ss_tag_frequency`` and trigger phrase stay), plus A1111's ``<name>.json`` sidecar."""
    src = Path(lora_dir) / KOHYA_WEIGHT_NAME
    if not src.is_file():
        raise ExportError(f"{lora_dir} has no {KOHYA_WEIGHT_NAME}: train with train.export_kohya=true")
    try:
        dest.mkdir(parents=True, exist_ok=True)
        out = dest / f"{name}.safetensors"
        tmp = dest / f".{name}.safetensors.tmp"
        shutil.copyfile(src, tmp)
        stamp_metadata(tmp, dict(meta))
        tmp.replace(out)  # a UI scanning the folder never sees half a file
        sidecar = {"description": meta.get("modelspec.description", ""), "activation text": trigger_word,
                   "sd version": family_for(family).a1111_sd_version, "preferred weight": 1.0,
                   "notes": meta.get("modelspec.title", name)}
        (dest / f"{name}.json").write_text(json.dumps(sidecar, indent=2) + "\n", encoding="utf-8")
    except OSError as e:
        raise ExportError(f"cannot write the LoRA to {dest}: {e.strerror or e}: set deploy.export.loras_dir "
                          "to a writable folder") from None
    return out


def to_store(lora_dir: Path, store: Store, concept: str, version: str, record: Mapping[str, object]) -> str:
    """The adapter folder (both weight files, card, training args) and the decision under
    ``loras/<concept>/v<version>/`` of the store; returns its URL."""
    prefix = f"loras/{concept}/v{version}"
    with tempfile.TemporaryDirectory(prefix="lf-export-") as tmp:
        folder = Path(tmp) / "v"
        shutil.copytree(lora_dir, folder, ignore=shutil.ignore_patterns("samples"))
        (folder / DEPLOY_DECISION.path).write_text(json.dumps(record, indent=2, default=str) + "\n", encoding="utf-8")
        store.upload_dir(folder, prefix)
    return store.url_of(prefix)


def fp16_copy(lora_dir: Path, out: Path) -> Path:
    """The diffusers weights in float16 (half the size; what GPU serving loads anyway)."""
    import torch
    from safetensors.torch import load_file, save_file

    tensors = {k: v.to(torch.float16) if v.is_floating_point() else v
               for k, v in load_file(str(Path(lora_dir) / LORA_WEIGHT_NAME)).items()}
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / LORA_WEIGHT_NAME), metadata={"format": "pt", "dtype": "float16"})
    return out / LORA_WEIGHT_NAME


def fused_pipeline(lora_dir: Path, base_ref: str, family: str, cache_dir: Path, out: Path) -> Path:
    """The base pipeline with the LoRA fused into its weights, saved in diffusers' format (no
    adapter to load at serving time; one file set per concept)."""
    from lora_factory.models import load_pipeline

    pipe = load_pipeline(base_ref, family, cache_dir)  # type: ignore[arg-type]
    pipe.load_lora_weights(str(lora_dir), weight_name=LORA_WEIGHT_NAME)
    pipe.fuse_lora()
    pipe.unload_lora_weights()
    pipe.save_pretrained(str(out), safe_serialization=True)
    return out
