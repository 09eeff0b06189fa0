"""Curation is reproducible (issue 10, item 12): two crawls that found the same images in another
order keep the same copies of exact duplicates, and name the same ``dup_of``."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
from PIL import Image

from lora_factory.config import CurateConfig
from lora_factory.manifest import item_id_for
from tasks.curate import curate_items


def _picture(seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    blocks = rng.integers(40, 215, size=(13, 13, 3))
    return Image.fromarray(np.kron(blocks, np.ones((8, 8, 1))).astype("uint8")[:96, :96])


def _copies(folder: Path) -> list[dict]:
    """Three pictures, each saved three ways (PNG compression levels and a text chunk): the
    same pixels in different bytes, so three items per picture that only the tie-break tells
    apart."""
    from PIL.PngImagePlugin import PngInfo

    folder.mkdir(parents=True, exist_ok=True)
    items = []
    for picture in range(3):
        img = _picture(picture)
        for copy in range(3):
            info = PngInfo()
            info.add_text("copy", str(copy))
            buf = io.BytesIO()
            img.save(buf, "PNG", compress_level=copy * 4, pnginfo=info)
            iid = item_id_for(buf.getvalue())
            (folder / f"{iid}.png").write_bytes(buf.getvalue())
            items.append({"item_id": iid, "image_path": f"images/{iid}.png", "image_url": f"http://a/{iid}.png",
                          "page_url": "http://a/p", "license": "CC-BY-4.0", "alt_text": f"picture {picture}",
                          "width": 96, "height": 96, "num_bytes": len(buf.getvalue()), "mime_type": "image/png"})
    return items


def _crawled_in(order: list[dict]) -> list[dict]:
    """The items as a crawl that found them in ``order`` records them: crawl times follow it."""
    start = datetime(2026, 1, 1, tzinfo=UTC)
    return [{**it, "crawl_time": start + timedelta(seconds=n)} for n, it in enumerate(order)]


def test_the_same_items_in_another_order_keep_the_same_copies(tmp_path: Path) -> None:
    items = _copies(tmp_path / "images")
    cfg = CurateConfig(languages=None, text_dedup_threshold=None, min_sharpness=None)
    outcomes = []
    for order in (items, items[::-1], items[3:] + items[:3]):
        result = curate_items(_crawled_in(order), tmp_path, cfg)
        outcomes.append({d["item_id"]: (d["decision"], d["reason"], d["dup_of"]) for d in result.decisions})
    assert outcomes[0] == outcomes[1] == outcomes[2]
    kept = sorted(i for i, (verdict, _, _) in outcomes[0].items() if verdict == "keep")
    assert len(kept) == 3  # one copy per picture...
    for picture in range(3):  # ...the one with the smallest item id
        ids = sorted(it["item_id"] for it in items[picture * 3 : picture * 3 + 3])
        assert ids[0] in kept
        assert all(outcomes[0][i] == ("drop", "exact_duplicate", ids[0]) for i in ids[1:])
