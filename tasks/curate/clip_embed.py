"""CLIP image embeddings of image files with decode + preprocess overlapped with the forward pass.

Why a pipeline: on a CPU the model forward is the cost that matters; decoding and resizing the
next batch in worker threads (PIL and torch release the GIL) while the current one runs keeps the
stage's throughput close to the bare model's (``bench/curate.py`` measures the ratio). The same
decode feeds the pixel measures (``on_decoded``), so each image is read once.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from datatools.features import DECODE_ERRORS, open_oriented

OnDecoded = Callable[[int, Image.Image, bool], None]
OnError = Callable[[int, str], None]


def _prepare(preprocess: Callable[[Any], Any], paths: Sequence[Path], idx: range,
             on_decoded: OnDecoded | None, on_error: OnError | None) -> tuple[list[int], list[Any]]:
    ok, tensors = [], []
    for i in idx:
        try:
            img, rotated = open_oriented(paths[i])
        except DECODE_ERRORS as e:
            if on_error is not None:
                on_error(i, f"cannot decode: {e}")
            continue
        if on_decoded is not None:
            on_decoded(i, img, rotated)
        tensors.append(preprocess(img.convert("RGB")))
        ok.append(i)
    return ok, tensors


def embed_image_files(
    scorer: Any,
    paths: Sequence[Path],
    *,
    batch_size: int = 64,
    workers: int = 2,
    prefetch: int = 2,
    on_decoded: OnDecoded | None = None,
    on_error: OnError | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(embeddings, ok): one L2-normalised row per path (zeros where it could not be decoded)."""
    import torch

    n = len(paths)
    out = np.zeros((n, scorer.dim), np.float32)
    ok = np.zeros(n, bool)
    batches = [range(s, min(n, s + batch_size)) for s in range(0, n, batch_size)]
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        pending: deque = deque()
        nxt = 0
        while nxt < len(batches) or pending:
            while nxt < len(batches) and len(pending) < max(1, prefetch):
                pending.append(pool.submit(_prepare, scorer.preprocess, paths, batches[nxt], on_decoded, on_error))
                nxt += 1
            idx, tensors = pending.popleft().result()
            if not idx:
                continue
            with torch.inference_mode():
                emb = scorer.model.encode_image(torch.stack(tensors).to(scorer.device)).float().cpu().numpy()
            out[idx] = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
            ok[idx] = True
    return out, ok
