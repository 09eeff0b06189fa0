"""Dataset doctor speed: a 1,000-image kohya folder inspected cold (empty cache), then again after
editing 10 files (warm cache: only those are decoded and embedded again). Prints one JSON document.

    python bench/doctor.py [--images 1000] [--edited 10]

Tiny CLIP (``tiny:clip``) on the CPU; the model is loaded before timing starts (loading is the
same cost for both runs). Target: warm >= 5x faster than cold.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import argparse  # noqa: E402
import json  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402


def _folder(root: Path, n: int) -> None:
    from tests.doctor_data import FOLDER, TRIGGER, shapes

    d = root / FOLDER
    d.mkdir(parents=True)
    for i in range(n):
        shapes(i).save(d / f"img_{i:05d}.png")
        (d / f"img_{i:05d}.txt").write_text(f"{TRIGGER}, shapes on a gradient, picture {i}")


def _inspect(root: Path, scorer, cache_dir: Path) -> tuple[float, dict]:
    from datatools.cache import MeasureCache
    from datatools.captions import clip_budget
    from datatools.doctor import diagnose
    from datatools.facts import Settings
    from datatools.readers import read_dataset
    from lora_factory.config import DoctorConfig

    start = time.perf_counter()
    ds = read_dataset(root)
    report = diagnose(ds, "shapes on a gradient", scorer, "tiny:clip", clip_budget(),
                      Settings(DoctorConfig(), trigger="lfstyle"), MeasureCache(cache_dir, "tiny:clip"))
    return time.perf_counter() - start, report.counts


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--edited", type=int, default=10)
    args = ap.parse_args()
    from lora_factory.models import load_clip_scorer
    from tests.doctor_data import FOLDER, shapes

    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        _folder(tmp_path / "ds", args.images)
        scorer = load_clip_scorer("tiny:clip", tmp_path / "models")
        cold, _ = _inspect(tmp_path / "ds", scorer, tmp_path / "cache")
        for i in range(args.edited):
            shapes(10_000 + i).save(tmp_path / "ds" / FOLDER / f"img_{i:05d}.png")
        warm, counts = _inspect(tmp_path / "ds", scorer, tmp_path / "cache")
    print(json.dumps({
        "images": args.images, "edited": args.edited, "clip": "tiny:clip", "cpu_count": os.cpu_count(),
        "cold_seconds": round(cold, 2), "warm_seconds": round(warm, 2), "speedup": round(cold / warm, 1),
        "warm_cache_hits": counts["cache_hits"], "target_speedup": 5.0,
    }, indent=2))


if __name__ == "__main__":
    main()
