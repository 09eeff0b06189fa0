"""A damaged cached model is rebuilt, not loaded (issue 10, item 8).

The cache used to trust that a model's folder existed: a truncated weights file failed training
with a 562-line traceback, on every run, forever.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from lora_factory.models import load_captioner, tiny_model_dir
from lora_factory.models.build_cache import MANIFEST, build_once, is_whole


def test_a_truncated_tiny_model_is_rebuilt_and_loads(tmp_path: Path) -> None:
    model = tiny_model_dir("captioner", tmp_path)
    weights = model / "model.safetensors"
    whole = weights.read_bytes()
    weights.write_bytes(whole[: len(whole) // 2])  # a copy or a disk that stopped half-way
    captioner = load_captioner("tiny:captioner", tmp_path)
    assert weights.read_bytes() == whole  # rebuilt: the builder is seeded
    assert len(captioner.caption([Image.new("RGB", (32, 32), "red")], max_new_tokens=3)) == 1
    assert [p.name for p in model.parent.iterdir()] == [model.name]  # nothing set aside is left


@pytest.mark.parametrize("damage", ["no manifest", "file missing", "file added", "same size, other bytes"])
def test_a_folder_is_trusted_only_while_its_manifest_agrees(tmp_path: Path, damage: str) -> None:
    builds: list[int] = []

    def build(out: Path) -> None:
        builds.append(1)
        (out / "sub").mkdir()
        (out / "sub" / "weights.bin").write_bytes(b"w" * 100)
        (out / "config.json").write_text("{}")

    target = build_once(tmp_path / "model", build)
    assert is_whole(target) and json.loads((target / MANIFEST).read_text())["files"]["sub/weights.bin"]["size"] == 100
    assert build_once(target, build) == target and len(builds) == 1  # whole: not rebuilt
    if damage == "no manifest":  # a folder an older version built, or a copy that stopped early
        (target / MANIFEST).unlink()
    elif damage == "file missing":
        (target / "config.json").unlink()
    elif damage == "file added":
        (target / "stray.tmp").write_text("x")
    else:
        (target / "sub" / "weights.bin").write_bytes(b"x" * 100)
    assert not is_whole(target)
    assert build_once(target, build) == target and len(builds) == 2
    assert is_whole(target) and (target / "sub" / "weights.bin").read_bytes() == b"w" * 100
