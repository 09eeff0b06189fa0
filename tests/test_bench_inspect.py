"""``bench/inspect.py`` is named like the standard library's ``inspect``: a bench script run as
``python bench/x.py`` has bench/ first on ``sys.path``, and must still get the real module."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_bench_on_the_path_still_gives_the_standard_librarys_inspect() -> None:
    probe = "import sys; sys.path.insert(0, 'bench'); import inspect, dataclasses; print(inspect.__file__, inspect.signature(dataclasses.fields))"
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    path, signature = out.stdout.split(" ", 1)
    assert Path(path) == Path(sysconfig.get_paths()["stdlib"]) / "inspect.py" and signature.startswith("(class_or_instance)")


def test_bench_inspect_runs_the_doctor_bench() -> None:
    out = subprocess.run([sys.executable, "bench/inspect.py", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "--images" in out.stdout and "--edited" in out.stdout
