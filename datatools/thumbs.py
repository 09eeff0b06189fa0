"""Inline thumbnails for self-contained HTML reports (curate, label, the dataset doctor).

Below the stages so the dataset doctor and the stage reports draw the same thumbnails.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path

from PIL import Image, UnidentifiedImageError


def thumbnail_uri(path: Path, size: int = 96, fmt: str = "PNG") -> str:
    """The image at ``path`` shrunk to fit ``size`` px, as a ``data:`` URI ('' if unreadable)."""
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            im.thumbnail((size, size))
            buf = io.BytesIO()
            im.save(buf, fmt, **({"quality": 85} if fmt == "JPEG" else {}))
        return f"data:image/{fmt.lower()};base64," + base64.b64encode(buf.getvalue()).decode()
    except (OSError, UnidentifiedImageError, ValueError):
        return ""
