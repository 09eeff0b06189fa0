"""Inputs and damaged state that used to escape the one-line error path (issue 10, items 8, 9).

Each case is the real command line in a child process: one ``error:`` line naming the file or
setting and what to do, exit code 2, no traceback; ``runs`` lists a damaged run without hiding
the others; ``explain`` rebuilds a damaged manifest from the stage outputs.
"""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from lora_factory.manifest import decision, write_decisions, write_items
from lora_factory.runstore import DONE, RunStore
from lora_factory.storage import open_store

CLI = Path(sys.executable).parent / "lora-factory"


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(CLI), *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def _one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


@pytest.mark.parametrize(
    ("args", "files", "expected"),
    [
        (["--profile", "bad.yaml"], {"bad.yaml": b"seed: 1\ncrawl: {user_agent: caf\xe9}\n"},
         "error: profile bad.yaml is not UTF-8 text (byte 0xe9 at offset 31): save it as UTF-8"),
        (["--topics-file", "topics.txt"], {"topics.txt": b"lighthouse\n\xff\xfeboat\n"},
         "error: topics file topics.txt is not UTF-8 text (byte 0xff at offset 11): save it as UTF-8"),
        (["--topics-file", "topics"], {"topics/a.yaml": b"- fox\n"},
         "error: topics file topics is a directory: give the path of a file"),
        (["--topics-file", "missing.yaml"], {}, "error: topics file missing.yaml does not exist"),
        (["--topics-file", "topics.yaml"], {"topics.yaml": b"topics: [fox\n"},
         "error: topics file topics.yaml is not valid YAML (line 2: "),
        (["-t", "fox", "--tracking-uri", "ftp://lf:hunter2@127.0.0.1/mlflow"], {},
         "error: tracking.uri 'ftp://lf:***@127.0.0.1/mlflow': MLflow cannot track into a 'ftp' URI: use "
         "sqlite:///path.db, postgresql://, mysql://, mssql://, http(s)://server, databricks or a folder path"),
        (["-t", "fox", "--tracking-uri", "http://lf:hunter2@127.0.0.1:9"], {},
         "error: tracking server http://lf:***@127.0.0.1:9 does not answer ("),
        (["-t", "fox\x07"], {}, "error: topic 'fox<U+0007>' contains the control character U+0007: remove it"),
    ],
)
def test_bad_input_files_and_uris_are_one_line(tmp_path: Path, args: list[str], files: dict[str, bytes],
                                               expected: str) -> None:
    for name, data in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(data)
    home = tmp_path / "home"
    line = _one_error_line(run_cli("run", *args, "--home", str(home), cwd=tmp_path))
    assert line.startswith(expected), line
    assert "hunter2" not in line
    assert not (home / "runs").exists()


def _item(n: int) -> dict:
    return {"item_id": f"{n:064x}", "image_path": f"images/{n}.png", "image_url": f"http://site/{n}.png",
            "page_url": "http://site/p", "license": "CC-BY-4.0", "crawl_time": datetime(2026, 1, 1, tzinfo=UTC),
            "width": 64, "height": 64, "num_bytes": 10, "mime_type": "image/png", "topic": "fox"}


@pytest.fixture
def store_with_runs(tmp_path: Path) -> tuple[Path, list[str]]:
    """Three runs in one home: a good one with a crawl and curation, a truncated run.json, and
    ``{}`` as run.json."""
    home = tmp_path / "home"
    runs = RunStore(open_store(str(home)), home / "work")
    good, cut, empty = (runs.create(["fox"], "tiny", {}) for _ in range(3))
    for stage, rows in (("crawl", None), ("curate", [decision(f"{1:064x}", "curate", False, "blurry")])):
        with good.stage_output(stage) as out:
            if rows is None:
                write_items(out / "items.parquet", [_item(1), _item(2)])
            else:
                write_decisions(out / "decisions.parquet", rows)
        good.set_stage(stage, DONE)
    good.update(status="done")
    (home / "runs" / cut.run_id / "run.json").write_text('{"run_id": "x", "topi')
    (home / "runs" / empty.run_id / "run.json").write_text("{}")
    return home, [good.run_id, cut.run_id, empty.run_id]


def test_runs_lists_damaged_runs_without_hiding_the_others(tmp_path: Path, store_with_runs) -> None:
    home, (good, cut, empty) = store_with_runs
    proc = run_cli("runs", "--home", str(home), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = {line.split()[0]: line for line in proc.stdout.splitlines()}
    assert lines[good].startswith(f"{good}  done        fox  [crawl:done curate:done label:pending")
    assert lines[cut] == (f"{cut}  damaged     {home}/runs/{cut}/run.json is not valid JSON (cut short by a "
                          f"crash?): run {cut} cannot be read; restore that file from a backup, or move the "
                          "run's folder away and start a new run")
    assert lines[empty].startswith(f"{empty}  damaged     {home}/runs/{empty}/run.json lacks run_id, topics")
    line = _one_error_line(run_cli("run", "--resume", cut, "--home", str(home), cwd=tmp_path))
    assert line.startswith(f"error: {home}/runs/{cut}/run.json is not valid JSON")


def test_explain_rebuilds_a_damaged_manifest_and_names_a_damaged_crawl(tmp_path: Path, store_with_runs) -> None:
    home, (good, _, _) = store_with_runs
    run_dir = home / "runs" / good
    run_cli("explain", good, "http://site/1.png", "--home", str(home), cwd=tmp_path)  # writes it
    manifest = run_dir / "manifest.parquet"
    manifest.write_bytes(manifest.read_bytes()[:100])
    proc = run_cli("explain", good, "http://site/1.png", "--home", str(home), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"{1:064x}"[:12] + " http://site/1.png: dropped by curate, reason blurry"
    assert all(line.startswith("note: ") for line in proc.stderr.splitlines())  # at most a note
    manifest.write_bytes(b"PAR1")
    items = run_dir / "crawl" / "items.parquet"
    items.write_bytes(items.read_bytes()[:50])
    line = _one_error_line(run_cli("explain", good, "http://site/1.png", "--home", str(home), cwd=tmp_path))
    assert line.startswith(f"error: {items} cannot be read (") and "the file is damaged" in line
