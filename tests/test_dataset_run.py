"""``lora-factory run --dataset PATH``: the factory from a user's own kohya folder, through the real
CLI (Prefect flow, tiny models, MLflow), with the dataset doctor on: the crawl stage records each
file's provenance (its path, hash, sidecar caption, licence) and every stage runs as usual."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from .doctor_data import shapes

CLI = Path(sys.executable).parent / "lora-factory"
# A loaded machine can need more than the CLI's 120 s for Prefect's temporary server to start.
def env() -> dict[str, str]:
    """Read when a test runs: the session's Prefect server (conftest) is set by then."""
    return {**os.environ, "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "600"}
SUBJECTS = ["a red fox", "a lighthouse", "a sailboat", "an old barn", "a mountain lake", "a city street",
            "a bowl of fruit", "a sleeping cat", "a wooden bridge", "a field of tulips"]

pytestmark = pytest.mark.e2e


def own_folder(root: Path) -> dict[str, str]:
    """A kohya folder with natural English captions; file -> caption."""
    d = root / "3_shapestyle"
    d.mkdir(parents=True)
    captions = {}
    for i, subject in enumerate(SUBJECTS):
        shapes(200 + i).save(d / f"{i:02d}.png")
        captions[f"{i:02d}.png"] = f"{subject} painted in bold flat shapes over a soft colour gradient"
        (d / f"{i:02d}.txt").write_text(captions[f"{i:02d}.png"])
    (root / "licence.txt").write_text("CC0\n")
    return captions


def test_a_factory_run_from_a_folder_records_its_files(tmp_path: Path) -> None:
    captions = own_folder(tmp_path / "mine")
    before = sorted(p.read_bytes() for p in (tmp_path / "mine").rglob("*") if p.is_file())
    home = tmp_path / "home"
    result = subprocess.run([str(CLI), "run", "--dataset", str(tmp_path / "mine"), "--home", str(home),
                             "--set", "doctor.enabled=true", "--set", "doctor.min_images=3"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=1800, env=env())
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = next((home / "runs").iterdir())
    state = json.loads((run_dir / "run.json").read_text())
    assert state["topics"] == ["shapestyle"]
    assert all(s["status"] == "done" for s in state["stages"].values())
    items = pq.read_table(run_dir / "crawl" / "items.parquet").to_pylist()
    assert len(items) == len(captions)
    for it in items:
        path = Path(it["image_url"].removeprefix("file://"))
        assert path.parent == (tmp_path / "mine" / "3_shapestyle").resolve()
        assert it["alt_text"] == captions[path.name] and it["license"] == "CC0"
        assert (run_dir / "crawl" / it["image_path"]).read_bytes() == path.read_bytes()
    assert (run_dir / "label" / "doctor.json").is_file() and (run_dir / "train" / "lora").is_dir()
    assert sorted(p.read_bytes() for p in (tmp_path / "mine").rglob("*") if p.is_file()) == before


def test_a_missing_dataset_is_one_line(tmp_path: Path) -> None:
    result = subprocess.run([str(CLI), "run", "--dataset", str(tmp_path / "nope"), "--home", str(tmp_path / "h")],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: crawl.dataset {tmp_path / 'nope'} does not exist: give a folder or .zip of images"]


def test_a_factory_run_from_a_url_list_records_the_urls(tmp_path: Path) -> None:
    import io

    from .fixture_api import serve_fixtures

    def png(seed: int) -> bytes:
        buf = io.BytesIO()
        shapes(300 + seed).save(buf, "PNG")
        return buf.getvalue()

    extra = {f"/img/{i:02d}.png": ("image/png", png(i)) for i in range(len(SUBJECTS))}
    with serve_fixtures(extra) as srv:
        rows = [f"{srv.base_url}/img/{i:02d}.png\t{s} painted in bold flat shapes over a soft colour gradient"
                for i, s in enumerate(SUBJECTS)]
        (tmp_path / "urls.txt").write_text("\n".join(rows) + "\n")
        result = subprocess.run(
            [str(CLI), "run", "-t", "flat shapes", "--home", str(tmp_path / "home"),
             "--set", "crawl.source=urls", "--set", f"crawl.urls_file={tmp_path / 'urls.txt'}",
             "--set", "crawl.allow_loopback=true", "--set", "label.allow_unknown_license=true"],
            cwd=tmp_path, capture_output=True, text=True, timeout=1800, env=env())
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = next((tmp_path / "home" / "runs").iterdir())
    items = pq.read_table(run_dir / "crawl" / "items.parquet").to_pylist()
    assert sorted(it["image_url"] for it in items) == sorted(f"{srv.base_url}{p}" for p in extra)
    assert all(it["alt_text"].endswith("soft colour gradient") for it in items)
    assert all(p.startswith(("/img/", "/robots.txt")) for p in srv.requests)
