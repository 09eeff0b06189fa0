"""``python bench/inspect.py [--images 1000] [--edited 10]``: the dataset doctor's bench under the
name issue 16 gives it. It runs ``bench/doctor.py`` (same arguments, same JSON: seconds for a
1,000-image folder cold, again after editing 10 files, and the speed-up; target >= 5x).

Why a file named like the standard library's ``inspect`` is safe here: a script run as
``python bench/<name>.py`` has bench/ first on ``sys.path``, so every ``import inspect`` in that
process (dataclasses, typing, torch ... all do one) finds this file first. Imported under that
name, it puts the standard library's module in its own place before anything else runs (the
import system hands the importer whatever ``sys.modules`` holds once the file has run), so every
bench script still gets the real module. Run as a script, it takes bench/ off ``sys.path`` before
any other import and runs bench/doctor.py.
"""

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))


def _without_bench(path: list[str]) -> list[str]:
    return [p for p in path if os.path.abspath(p or os.curdir) != _HERE]


if __name__ != "__main__":  # imported as ``inspect``: hand over the standard library's module
    import importlib

    _saved = sys.path[:]
    sys.path[:] = _without_bench(_saved)
    del sys.modules[__name__]
    try:
        sys.modules[__name__] = importlib.import_module(__name__)
    finally:
        sys.path[:] = _saved
else:
    import runpy

    sys.path[:] = _without_bench(sys.path)
    runpy.run_path(os.path.join(_HERE, "doctor.py"), run_name="__main__")
