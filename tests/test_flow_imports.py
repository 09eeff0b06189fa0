"""A fully cached re-run imports the flow and nothing of the stages: the flow module must not
pull in torch, diffusers, transformers or open_clip (each stage's task is imported when it runs)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_the_flow_imports_no_ml_library() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "tests.child_imports", "flows.factory"],
        capture_output=True, text=True, check=True, cwd=Path(__file__).resolve().parent.parent,
    ).stdout
    assert out.strip() == "[]"
