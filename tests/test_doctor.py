"""The dataset doctor (datatools): layouts read, zips refused, every planted defect found with the
right files and no clean file flagged, the report valid against its schema, scores in range."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from datatools.cache import MeasureCache
from datatools.captions import clip_budget
from datatools.doctor import diagnose
from datatools.embedmap import outliers
from datatools.facts import Settings
from datatools.readers import read_dataset
from datatools.safezip import ZipLimits
from lora_factory.config import DoctorConfig
from lora_factory.errors import DatasetError
from lora_factory.schemas import DOCTOR_SCORES, DoctorReport

from .doctor_data import TRIGGER, clean_folder, planted_folder, png_bytes, shapes, zip_bytes

CONCEPT = "shapes on a gradient"
# Dataset-level findings name every file of a group (the dominant cluster), not defective files.
DATASET_LEVEL = {"dominant_cluster"}
# Planted files a second rule rightly names too: the small and the wide image each have a bucket of
# their own (thin for a batch of 4), and the 16-bit test image is grey.
ALSO = {"small_bucket": {"2_lfstyle/small.png", "2_lfstyle/wide.png"}, "grayscale": {"2_lfstyle/sixteen.png"}}


@pytest.fixture(scope="module")
def scorer(model_cache: Path):
    from lora_factory.models import load_clip_scorer

    return load_clip_scorer("tiny:clip", model_cache)


def settings() -> Settings:
    return Settings(DoctorConfig(), resolution=256, bucket_step=64, batch_size=4, trigger=TRIGGER)


def inspect(path: Path, scorer, cache: Path | None = None) -> DoctorReport:
    ds = read_dataset(path, scratch=path.parent / "unzipped")
    return diagnose(ds, CONCEPT, scorer, "tiny:clip", clip_budget(), settings(), MeasureCache(cache, "tiny:clip"))


def test_every_planted_defect_is_found_with_its_files_and_no_clean_file_is_flagged(tmp_path: Path, scorer) -> None:
    clean, planted = planted_folder(tmp_path / "ds")
    report = inspect(tmp_path / "ds", scorer)
    found = {f.code: set(f.files) for f in report.findings}
    for code, files in planted.items():
        # exactly the planted files, plus other planted files the same rule rightly names
        assert found.get(code, set()) == files | ALSO.get(code, set()), (code, found.get(code))
    colour = next(f.title for f in report.findings if f.code == "colour_mode")
    assert all(kind in colour for kind in ("1 CMYK", "1 palette", "1 16-bit", "1 alpha")), colour
    flagged = set().union(*(v for k, v in found.items() if k not in DATASET_LEVEL))
    assert not flagged & set(clean)
    # kohya repeats come from the folder name; junk is never read as an image
    assert report.layout == "kohya" and report.counts["images_with_repeats"] == 2 * report.counts["images"]
    assert not any(i.file.startswith("__MACOSX") or "/._" in i.file for i in report.images)
    # worst first: errors, then warnings, then notes
    order = [f.severity for f in report.findings]
    assert order == sorted(order, key=["error", "warning", "info"].index)
    assert report.duplicate_groups and ["2_lfstyle/clean_03.png", "2_lfstyle/dup_exact.png"] in report.duplicate_groups
    assert all(f.fix and f.count == len(f.files) for f in report.findings)


def test_a_clean_folder_has_no_file_findings_and_the_report_validates(tmp_path: Path, scorer) -> None:
    clean_folder(tmp_path / "ds")
    report = inspect(tmp_path / "ds", scorer)
    assert [f.code for f in report.findings if f.code not in DATASET_LEVEL] == []
    again = DoctorReport.model_validate_json(report.model_dump_json())
    assert again == report and set(report.scores) == set(DOCTOR_SCORES)
    assert all(0 <= s.value <= 10 and s.formula for s in report.scores.values())
    assert not report.scores_meaningful and "random" in report.note
    with pytest.raises(ValueError):
        DoctorReport.model_validate({**json.loads(report.model_dump_json()), "schema_version": 2})


def test_imagefolder_and_flat_layouts(tmp_path: Path) -> None:
    folder = tmp_path / "hf"
    folder.mkdir()
    for i in range(3):
        shapes(i).save(folder / f"{i}.png")
    rows = [{"file_name": "0.png", "text": "a  caption"}, {"file_name": "1.png", "caption": "other"}, {"file_name": "2.png"}]
    (folder / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    ds = read_dataset(folder)
    assert ds.layout == "imagefolder" and [s.caption for s in ds.samples] == ["a caption", "other", None]
    flat = tmp_path / "flat"
    flat.mkdir()
    shapes(1).save(flat / "a.jpg")
    (flat / "a.caption").write_text("from a .caption file")
    shapes(2).save(flat / "b.webp")
    ds = read_dataset(flat)
    assert ds.layout == "flat" and [(s.rel, s.caption, s.repeats) for s in ds.samples] == [
        ("a.jpg", "from a .caption file", 1), ("b.webp", None, 1)]
    (folder / "metadata.jsonl").write_text(json.dumps({"file_name": "../x.png"}))
    with pytest.raises(DatasetError, match="outside the folder"):
        read_dataset(folder)
    with pytest.raises(DatasetError, match="no images"):
        read_dataset(_empty(tmp_path))


def _empty(tmp_path: Path) -> Path:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.md").write_text("no pictures")
    return tmp_path / "empty"


def test_a_folder_symlink_is_listed_and_not_followed(tmp_path: Path) -> None:
    clean_folder(tmp_path / "ds", n=2)
    (tmp_path / "secret.png").write_bytes(png_bytes(9))
    (tmp_path / "ds" / "link.png").symlink_to(tmp_path / "secret.png")
    ds = read_dataset(tmp_path / "ds")
    assert ds.symlinks == ["link.png"] and "link.png" not in [s.rel for s in ds.samples]


def test_a_zip_dataset_is_read(tmp_path: Path, scorer) -> None:
    z = tmp_path / "set.zip"
    z.write_bytes(zip_bytes({"1_x/a.png": png_bytes(1), "1_x/a.txt": b"lfstyle, a", "1_x/b.png": png_bytes(2)}))
    ds = read_dataset(z, scratch=tmp_path / "scratch")
    assert ds.layout == "kohya" and len(ds.samples) == 2 and ds.source == str(z)


@pytest.mark.parametrize("entries,links,match", [
    ({"../evil.png": b"x"}, None, "climbs out"),
    ({"ok/../../evil.png": b"x"}, None, "climbs out"),
    ({"/etc/evil.png": b"x"}, None, "absolute path"),
    ({"a.png": b"x"}, {"link.png": "/etc/passwd"}, "symbolic link"),
    ({"bomb.png": b"\0" * (8 << 20)}, None, "zip bomb"),
])
def test_an_unsafe_zip_is_refused_and_nothing_is_written(tmp_path: Path, entries, links, match) -> None:
    z = tmp_path / "bad.zip"
    z.write_bytes(zip_bytes(entries, links))
    with pytest.raises(DatasetError, match=match):
        read_dataset(z, scratch=tmp_path / "scratch")
    assert not (tmp_path / "scratch").exists() and not (tmp_path / "evil.png").exists()


def test_zip_count_and_size_limits(tmp_path: Path) -> None:
    z = tmp_path / "many.zip"
    z.write_bytes(zip_bytes({f"{i}.png": b"x" for i in range(5)}))
    with pytest.raises(DatasetError, match="5 entries"):
        read_dataset(z, scratch=tmp_path / "s", limits=ZipLimits(max_files=4))
    with pytest.raises(DatasetError, match="expands to"):
        read_dataset(z, scratch=tmp_path / "s", limits=ZipLimits(max_total_bytes=3))
    bad = tmp_path / "not.zip"
    bad.write_bytes(b"PK nothing")
    with pytest.raises(DatasetError, match="not a readable zip"):
        read_dataset(bad, scratch=tmp_path / "s")
    assert zipfile.is_zipfile(z)


def test_outliers_on_controlled_vectors() -> None:
    """Tiny CLIP is random, so the outlier rule is checked on vectors with a known answer: two
    tight groups and one vector far from both."""
    rng = np.random.default_rng(0)
    a, b, far = np.eye(16)[0], np.eye(16)[1], np.eye(16)[2]
    rows = [v + 0.05 * rng.standard_normal(16) for v in [a] * 10 + [b] * 10] + [far + a * 0.5]
    x = np.array(rows)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    mask, z = outliers(x, 3.5)
    assert mask.tolist() == [False] * 20 + [True] and z[-1] > 3.5
    assert not outliers(x[:7], 3.5)[0].any()  # too few to judge


def test_the_cache_is_keyed_by_content(tmp_path: Path, scorer) -> None:
    clean_folder(tmp_path / "ds", n=4)
    first = inspect(tmp_path / "ds", scorer, tmp_path / "cache")
    assert first.counts["cache_hits"] == 0
    shapes(99).save(tmp_path / "ds" / "2_lfstyle" / "clean_00.png")  # edit one file
    (tmp_path / "ds" / "2_lfstyle").rename(tmp_path / "ds" / "3_lfstyle")  # renaming keeps the cache
    second = inspect(tmp_path / "ds", scorer, tmp_path / "cache")
    assert second.counts["cache_hits"] == 3
    assert [i.sha256 for i in second.images][1:] == [i.sha256 for i in first.images][1:]


def test_a_folder_becomes_crawl_items_with_provenance(tmp_path: Path) -> None:
    from datatools.provenance import crawl_items, folder_licence

    clean_folder(tmp_path / "ds", n=2)
    d = tmp_path / "ds" / "2_lfstyle"
    (d / "copy.png").write_bytes((d / "clean_00.png").read_bytes())
    (d / "broken.png").write_bytes(b"nope")
    (tmp_path / "ds" / "license.txt").write_text("CC-BY-4.0\nby me")
    ds = read_dataset(tmp_path / "ds")
    items, rejected = crawl_items(ds, tmp_path / "crawl", "images", "shapes", folder_licence(ds.root, None))
    assert len(items) == 2 and [r["reason"] for r in rejected] == ["undecodable"]
    first = next(it for it in items if it["image_url"].endswith("clean_00.png"))
    assert first["other_urls"] == [(d / "copy.png").resolve().as_uri()]
    assert first["alt_text"] == f"{TRIGGER}, shapes on a gradient, picture 0" and first["license"] == "CC-BY-4.0"
    assert (tmp_path / "crawl" / first["image_path"]).read_bytes() == (d / "clean_00.png").read_bytes()
    assert folder_licence(ds.root, "CC0") == "CC0"
    z = tmp_path / "set.zip"
    z.write_bytes(zip_bytes({"a.png": png_bytes(1)}))
    zds = read_dataset(z, scratch=tmp_path / "scratch")
    zitems, _ = crawl_items(zds, tmp_path / "crawl2", "images", "shapes", "unknown")
    assert zitems[0]["image_url"] == f"zip:{z.resolve().as_uri()}!/a.png"
