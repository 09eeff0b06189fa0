"""Is this response a usable image? Decode it fully with Pillow, behind a pixel-count guard.

Why decode at crawl time: a file that does not decode, or a decompression bomb, must be a
rejection with a reason here, not a crash in curation or training later.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

# Larger than any sane training image (8k x 8k), far below what exhausts memory.
MAX_PIXELS = 64_000_000
Image.MAX_IMAGE_PIXELS = MAX_PIXELS

# The decoders we accept, with the file extension and MIME type we store them under.
FORMATS: dict[str, tuple[str, str]] = {
    "JPEG": ("jpg", "image/jpeg"),
    "PNG": ("png", "image/png"),
    "GIF": ("gif", "image/gif"),
    "WEBP": ("webp", "image/webp"),
    "BMP": ("bmp", "image/bmp"),
}
EXT_BY_MIME = {mime: ext for ext, mime in FORMATS.values()}


class ImageRejected(Exception):
    """The bytes are not an image we keep; ``reason`` is a short token, ``detail`` a sentence."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


@dataclass(frozen=True)
class ImageInfo:
    width: int
    height: int
    format: str
    ext: str
    mime_type: str


def inspect_image(data: bytes, content_type: str | None = None) -> ImageInfo:
    """Decode ``data``; raise ``ImageRejected`` (not_image, undecodable, too_large) if unusable."""
    declared = (content_type or "").split(";")[0].strip().lower()
    if not data:
        raise ImageRejected("not_image", "empty response body")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=list(FORMATS)) as img:
                width, height = img.size
                if width * height > MAX_PIXELS:
                    raise ImageRejected("too_large", f"{width}x{height} px > {MAX_PIXELS} pixels")
                img.load()
                fmt = img.format or ""
    except ImageRejected:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageRejected("too_large", str(exc)) from exc
    except UnidentifiedImageError as exc:
        reason = "undecodable" if declared.startswith("image/") else "not_image"
        raise ImageRejected(
            reason, f"not a supported image (Content-Type {declared or 'missing'})"
        ) from exc
    except Exception as exc:
        raise ImageRejected("undecodable", f"{type(exc).__name__}: {exc}") from exc
    ext, mime = FORMATS[fmt]
    return ImageInfo(width=width, height=height, format=fmt, ext=ext, mime_type=mime)
