"""``lora-factory inspect``: report and dashboard written, --fix makes a copy that passes a second
inspection, the input folder byte-identical before and after, bad input one line."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps
from typer.testing import CliRunner

from cli.app import app
from lora_factory.schemas import DoctorReport

from .doctor_data import TRIGGER, planted_folder

# What --fix cannot do without a person: it says so, and these stay in the second report.
NEEDS_A_PERSON = {"missing_caption", "empty_caption", "below_resolution", "extreme_aspect", "small_bucket",
                  "grayscale", "dominant_cluster", "outlier"}


def tree_hash(root: Path) -> dict[str, str]:
    """Every path below ``root`` (symlinks as their target) with its content hash."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_symlink():
            out[rel] = "-> " + str(p.readlink())
        elif p.is_file():
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
        else:
            out[rel] = "dir"
    return out


def inspect(*args: str | Path, home: Path) -> tuple[int, str]:
    argv = ["inspect", *map(str, args), "--trigger", TRIGGER, "--home", str(home),
            "--set", "train.resolution=256", "--set", "train.batch_size=4"]
    result = CliRunner().invoke(app, argv)
    return result.exit_code, result.output


@pytest.fixture(scope="module")
def home(model_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A home whose models folder is the session's tiny models (built once)."""
    h = tmp_path_factory.mktemp("home")
    (h / "models").symlink_to(model_cache)
    return h


def test_inspect_then_fix_then_inspect_again(tmp_path: Path, home: Path) -> None:
    _, planted = planted_folder(tmp_path / "ds")
    before = tree_hash(tmp_path / "ds")
    code, out = inspect(tmp_path / "ds", "--concept", "shapes on a gradient", "--out", tmp_path / "rep",
                        "--fix", tmp_path / "fixed", home=home)
    assert code == 0, out
    assert tree_hash(tmp_path / "ds") == before  # the input is only read
    report = DoctorReport.model_validate_json((tmp_path / "rep" / "doctor.json").read_text())
    assert set(planted) <= {f.code for f in report.findings}
    page = (tmp_path / "rep" / "doctor.html").read_text()
    assert page.count("<svg") >= 3 and "data:image/png;base64," in page and "Fix:" in page
    log = json.loads((tmp_path / "rep" / "fix_log.json").read_text())
    assert {"2_lfstyle/dup_exact.png", "2_lfstyle/corrupt.png", ".DS_Store"} <= {c["file"] for c in log if c["action"] == "removed"}
    assert not (tmp_path / "fixed" / "2_lfstyle" / "dup_exact.png").exists()
    assert (tmp_path / "fixed" / "2_lfstyle" / "clean_03.png").exists()  # the kept copy
    changed = {(c["file"].removeprefix("2_lfstyle/"), c["action"]) for c in log}
    assert {(n, "re-encoded") for n in ("rotated.jpg", "cmyk.jpg", "palette.png", "sixteen.png", "alpha.png")} <= changed
    assert {(n, "caption") for n in ("longcap.png", "notrigger.png", "twotrigger.png")} <= changed
    _check_fixed_pixels(tmp_path / "ds" / "2_lfstyle", tmp_path / "fixed" / "2_lfstyle")

    code, out = inspect(tmp_path / "fixed", "--concept", "shapes on a gradient", "--out", tmp_path / "rep2", home=home)
    assert code == 0, out
    second = DoctorReport.model_validate_json((tmp_path / "rep2" / "doctor.json").read_text())
    assert {f.code for f in second.findings} <= NEEDS_A_PERSON
    assert second.counts["cache_hits"] > 0  # unchanged files are not measured again


def _check_fixed_pixels(src: Path, fixed: Path) -> None:
    """Rotation is in the pixels (not merely the EXIF tag dropped), transparency is flattened on
    white, and the trigger word is in each fixed caption exactly once."""
    with Image.open(src / "rotated.jpg") as im:
        upright = np.asarray(ImageOps.exif_transpose(im).convert("RGB"), np.float32)
        as_stored = np.asarray(im.convert("RGB"), np.float32)
    with Image.open(fixed / "rotated.jpg") as im:
        assert im.getexif().get(0x0112, 1) == 1
        pixels = np.asarray(im.convert("RGB"), np.float32)
    assert np.abs(pixels - upright).mean() < 3 < np.abs(pixels - as_stored).mean()
    with Image.open(fixed / "alpha.png") as im:
        assert im.mode == "RGB" and im.getpixel((10, 10)) == (255, 255, 255)  # was transparent
    for name in ("notrigger", "twotrigger", "longcap"):
        assert (fixed / f"{name}.txt").read_text().split(", ").count(TRIGGER) == 1


def test_fix_never_writes_into_the_input_or_over_a_folder(tmp_path: Path, home: Path) -> None:
    planted_folder(tmp_path / "ds")
    code, out = inspect(tmp_path / "ds", "--concept", "x", "--fix", tmp_path / "ds" / "clean", home=home)
    assert code == 2 and out.count("\n") == 1 and "overlaps the dataset" in out
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    code, out = inspect(tmp_path / "ds", "--concept", "x", "--fix", tmp_path / "full", home=home)
    assert code == 2 and "not empty" in out


def test_bad_input_is_one_line(tmp_path: Path, home: Path) -> None:
    code, out = inspect(tmp_path / "nope", "--concept", "x", home=home)
    assert code == 2 and out.strip().startswith("error:") and "does not exist" in out and out.count("\n") == 1
    code, out = inspect(tmp_path, home=home)
    assert code == 2 and "--concept" in out


def test_schema_is_printed() -> None:
    result = CliRunner().invoke(app, ["inspect", "--schema"])
    schema = json.loads(result.output)
    assert schema["properties"]["schema_version"]["const"] == 1 and "findings" in schema["required"]


@pytest.mark.parametrize(("profile", "step"), [("tiny", 16), ("sd15", 64), ("tiny-flux", 16)])
def test_inspect_checks_the_buckets_of_the_profiles_family(profile: str, step: int, tmp_path: Path) -> None:
    from cli.inspect import with_family_buckets
    from lora_factory.profiles import load_config

    cfg = load_config(profile, overrides={"home": str(tmp_path)})
    assert with_family_buckets(cfg).train.bucket_step == step
    pinned = load_config(profile, overrides={"home": str(tmp_path), "train": {"bucket_step": 128}})
    assert with_family_buckets(pinned).train.bucket_step == 128
