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
        (["run", "-t", "fox", "--profile", "nope"], "error: unknown profile 'nope': choose one of flux, sd15, sd3, sdxl, tiny, tiny-flux, tiny-sd3"),
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


SEED_FILES = {
    "seeds.yaml": "fox:\n  - https://a.example/fox\n  - https://a.example/fox\nowl: https://b.example/owl\n",
    "seeds.csv": "topic,url\n# comments and blank lines are skipped\n\nfox,https://a.example/fox\nowl, https://b.example/owl\n",
}


@pytest.mark.parametrize("name", sorted(SEED_FILES))
def test_seeds_option_reads_yaml_and_csv(tmp_path: Path, name: str) -> None:
    (tmp_path / name).write_text(SEED_FILES[name])
    proc = run_cli("config", "--seeds", name, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (
        "  seeds:\n    fox:\n    - https://a.example/fox\n    owl:\n    - https://b.example/owl\n"
        in proc.stdout
    )
    assert "  source: seeds\n" in proc.stdout


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("missing.yaml", None, "error: cannot read seed file missing.yaml: No such file or directory"),
        ("seeds.txt", "fox https://a.example/\n", "error: seed file seeds.txt must be .yaml, .yml or .csv"),
        ("seeds.yaml", "fox:\n - a\n  b: [\n", "error: seeds.yaml is not valid YAML (line 3: mapping values"),
        ("seeds.yaml", "- https://a.example/\n", "error: seeds.yaml must map each topic to a list of URLs"),
        ("seeds.yaml", "fox: [1, 2]\n", "error: seeds.yaml: topic 'fox' must map to a URL or a list of URLs"),
        ("seeds.yaml", "", "error: seed file seeds.yaml lists no seed URLs"),
        ("seeds.csv", "fox,https://a.example/\nowl,https://b.example/,x\n",
         "error: seeds.csv, line 2: expected 'topic,url', got 3 fields"),
        ("seeds.csv", "fox,ftp://a.example/\n", "error: seeds.csv, line 1: 'ftp://a.example/' is not an http(s) URL"),
        ("seeds.csv", b"fox,https://a.example/caf\xe9\n", "error: seed file seeds.csv is not UTF-8 text"),
    ],
)
def test_bad_seed_file_is_one_line_and_writes_nothing(
    tmp_path: Path, name: str, content: str | bytes | None, expected: str
) -> None:
    if isinstance(content, bytes):
        (tmp_path / name).write_bytes(content)
    elif content is not None:
        (tmp_path / name).write_text(content)
    home = tmp_path / "home"
    proc = run_cli("run", "-t", "fox", "--seeds", name, "--home", str(home), cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(expected), lines[0]
    assert not home.exists()
