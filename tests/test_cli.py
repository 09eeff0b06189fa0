"""Bad input at the command line: one clear line, a non-zero exit, and nothing written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

CLI = Path(sys.executable).parent / "lora-factory"


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(CLI), *args], cwd=cwd, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["run", "--topics", " , "], "error: no topics given: pass at least one"),
        (["run", "-t", "fox", "--profile", "nope"], "error: unknown profile 'nope': choose one of sd15, sdxl, tiny"),
        (["run", "-t", "fox", "--set", "train.rank=zero"], "error: config error in profile 'tiny' with overrides: train.rank: Input should be a valid integer"),
        (["run", "-t", "fox", "--tracking-uri", "http://127.0.0.1:9"], "error: tracking server http://127.0.0.1:9 does not answer"),
        (["run", "-t", "fox", "--store", "{home}/file/sub"], "is not writable"),
        (["run", "-t", "fox", "--resume", "20990101-000000-abcdef"], "error: run '20990101-000000-abcdef' not found"),
        (["run", "-t", "fox", "--set", "crawl.source=seeds"], "crawl.seeds has no URLs for ['fox']"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(tmp_path: Path, args: list[str], expected: str) -> None:
    home = tmp_path / "home"
    (tmp_path / "file").write_text("a file where a folder should be")
    args = [a.replace("{home}", str(tmp_path)) for a in args]
    proc = run_cli(*args, "--home", str(home), cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert expected in lines[0]
    assert not (home / "runs").exists()  # nothing half-written for a re-run to trip on


def test_config_command_shows_resolved_settings(tmp_path: Path) -> None:
    proc = run_cli("config", "--profile", "sd15", "--set", "train.rank=32", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "rank: 32" in proc.stdout and "stable-diffusion-v1-5/stable-diffusion-v1-5" in proc.stdout
