"""Child program for ``test_import_is_cheap``: which heavy libraries importing a module loads.

Run as ``python -m tests.child_imports MODULE``; prints the sorted list of heavy modules.
"""

from __future__ import annotations

import importlib
import sys

HEAVY = {"torch", "diffusers", "transformers", "open_clip"}


def heavy_imports_of(module: str) -> str:
    """What this program prints for ``module``, run in a fresh interpreter."""
    import subprocess
    from pathlib import Path

    return subprocess.run([sys.executable, "-m", "tests.child_imports", module], capture_output=True, text=True,
                          check=True, cwd=Path(__file__).resolve().parent.parent).stdout.strip()


if __name__ == "__main__":
    importlib.import_module(sys.argv[1])
    print(sorted(HEAVY & set(sys.modules)))
