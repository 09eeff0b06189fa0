"""The doctor's cache: a file's measures and CLIP embedding, keyed by its content.

Why by content (sha256 of the bytes), not by path or mtime: renaming or copying a dataset keeps
the cache warm, and an edited file always misses. The CLIP model reference is part of the key,
since its embeddings differ per model; the measure version too, so a changed measure misses.
One ``.npz`` per file: the measures as JSON text and the embedding as an array.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from .measure import MEASURE_VERSION, FileMeasure


class MeasureCache:
    def __init__(self, root: Path | None, model_ref: str) -> None:
        tag = hashlib.sha256(f"{model_ref}|v{MEASURE_VERSION}".encode()).hexdigest()[:16]
        self.root = Path(root) / tag if root is not None else None

    def _path(self, sha: str) -> Path:
        assert self.root is not None
        return self.root / sha[:2] / f"{sha}.npz"

    def get(self, sha: str) -> tuple[FileMeasure, np.ndarray | None] | None:
        if self.root is None or not self._path(sha).is_file():
            return None
        try:
            with np.load(self._path(sha), allow_pickle=False) as z:
                fm = FileMeasure(**json.loads(str(z["meta"])))
                emb = z["emb"] if z["emb"].size else None
        except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile):
            return None  # a damaged entry is a miss, measured again
        return fm, emb

    def put(self, fm: FileMeasure, emb: np.ndarray | None) -> None:
        if self.root is None:
            return
        path = self._path(fm.sha256)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "wb") as f:  # written whole, then renamed: readers never see half
            np.savez(f, meta=np.array(json.dumps(fm.to_dict())),
                     emb=np.zeros(0, np.float32) if emb is None else emb.astype(np.float32))
        os.replace(tmp, path)
