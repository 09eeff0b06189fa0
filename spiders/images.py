"""Is this response a usable image? Check type and magic bytes, guard the pixel count, decode it
fully with Pillow, and store it in a canonical format.

Why decode at crawl time: a file that does not decode, or a decompression bomb, must be a
rejection with a reason here, not a crash in curation or training later.

Reasons (stable tokens, counted in crawl_stats.json):
``not_image`` (the server says it is not an image: text/html ...), ``bad_magic`` (it says image
but the bytes are no image format we read, e.g. HTML served as image/jpeg), ``decompression_bomb``
(a header claiming far more pixels than the bytes could plausibly hold), ``too_many_pixels``,
``undecodable`` (truncated or corrupt data), ``too_small`` (checked by the spider).

Canonical format: JPEG (RGB or greyscale) and PNG bytes are kept exactly as downloaded, so the
item id is the sha256 of the server's bytes; every other accepted format (GIF, WebP, BMP, CMYK
JPEG, 16-bit PNG ...) is converted to PNG, and its item id is the sha256 of that PNG.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

from PIL import Image, ImageOps, UnidentifiedImageError

# Pillow's own guard is a backstop only: ``inspect_image`` checks the header's pixel count
# against the configured limit before decoding anything, and rejects a header beyond this one
# itself (not by turning Pillow's DecompressionBombWarning into an error: ``warnings``'s
# catch_warnings is not thread-safe, and images are inspected in a thread pool).
Image.MAX_IMAGE_PIXELS = 1_000_000_000
DEFAULT_MAX_PIXELS = 40_000_000
# A header that claims more pixels per byte of file than this is a decompression bomb: even a
# flat-colour PNG stays below ~1000 (zlib's ratio limit); real photos are far below 50.
BOMB_PIXELS_PER_BYTE = 1000
BOMB_MIN_PIXELS = 4_000_000  # small images are never bombs, whatever their ratio

# Magic bytes of the formats we read, as (prefix, offset) -> Pillow format name.
MAGIC: tuple[tuple[bytes, int, str], ...] = (
    (b"\xff\xd8\xff", 0, "JPEG"),
    (b"\x89PNG\r\n\x1a\n", 0, "PNG"),
    (b"GIF87a", 0, "GIF"),
    (b"GIF89a", 0, "GIF"),
    (b"WEBP", 8, "WEBP"),
    (b"BM", 0, "BMP"),
)
# Stored formats: extension and MIME type.
FORMATS: dict[str, tuple[str, str]] = {"JPEG": ("jpg", "image/jpeg"), "PNG": ("png", "image/png")}
KEPT_MODES = {"JPEG": {"RGB", "L"}, "PNG": {"RGB", "RGBA", "L", "LA", "P", "1"}}
# Content types a server may use for an image it does not label properly.
NEUTRAL_TYPES = {"", "application/octet-stream", "binary/octet-stream", "application/binary"}


class ImageRejected(Exception):
    """The bytes are not an image we keep; ``reason`` is a short token, ``detail`` a sentence."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


@dataclass(frozen=True)
class ImageInfo:
    width: int
    height: int
    format: str  # the format as downloaded
    ext: str  # of the stored (canonical) bytes
    mime_type: str  # of the stored (canonical) bytes
    data: bytes  # the canonical bytes to store
    converted: bool


def declared_type(content_type: str | None) -> str:
    return (content_type or "").split(";")[0].strip().lower()


def type_is_acceptable(content_type: str | None) -> bool:
    """May a response with this Content-Type be an image? (checked again on the bytes)"""
    declared = declared_type(content_type)
    return declared.startswith("image/") or declared in NEUTRAL_TYPES


def sniff(data: bytes) -> str | None:
    """The image format the magic bytes announce, or None."""
    for prefix, offset, fmt in MAGIC:
        if data[offset : offset + len(prefix)] == prefix:
            if fmt == "WEBP" and data[:4] != b"RIFF":
                continue
            return fmt
    return None


def inspect_image(
    data: bytes, content_type: str | None = None, max_pixels: int = DEFAULT_MAX_PIXELS
) -> ImageInfo:
    """Validate and decode ``data``; raise ``ImageRejected`` with a reason token if unusable."""
    declared = declared_type(content_type)
    if not type_is_acceptable(content_type):
        raise ImageRejected("not_image", f"Content-Type {declared}")
    if not data:
        raise ImageRejected("undecodable", "empty response body")
    fmt = sniff(data)
    if fmt is None:
        head = data[:16].lstrip().lower()
        what = "HTML" if head.startswith((b"<!doctype", b"<html", b"<")) else "unknown bytes"
        raise ImageRejected("bad_magic", f"{what} served as {declared or 'no Content-Type'}")
    try:
        with Image.open(io.BytesIO(data), formats=[fmt]) as img:
            width, height = img.size
            pixels = width * height
            if pixels > (Image.MAX_IMAGE_PIXELS or pixels) or (
                pixels >= BOMB_MIN_PIXELS and pixels > BOMB_PIXELS_PER_BYTE * len(data)
            ):
                raise ImageRejected(
                    "decompression_bomb", f"{width}x{height} px claimed by {len(data)} bytes"
                )
            if pixels > max_pixels:
                raise ImageRejected(
                    "too_many_pixels", f"{width}x{height} px > {max_pixels} pixels"
                )
            img.load()
            if fmt in FORMATS and img.mode in KEPT_MODES[fmt]:
                ext, mime = FORMATS[fmt]
                return ImageInfo(width, height, fmt, ext, mime, data, converted=False)
            canonical, (width, height) = _to_png(img)
    except ImageRejected:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageRejected("decompression_bomb", str(exc)) from exc
    except UnidentifiedImageError as exc:
        raise ImageRejected("undecodable", f"{fmt} header not readable") from exc
    except Exception as exc:  # truncated streams, bad chunks, codec errors
        raise ImageRejected("undecodable", f"{type(exc).__name__}: {exc}") from exc
    ext, mime = FORMATS["PNG"]
    return ImageInfo(width, height, fmt, ext, mime, canonical, converted=True)


def _to_png(img: Image.Image) -> tuple[bytes, tuple[int, int]]:
    """Deterministic PNG of the first frame, RGB or RGBA, EXIF orientation applied."""
    img.seek(0)
    frame = ImageOps.exif_transpose(img)
    has_alpha = frame.mode in ("RGBA", "LA", "PA") or (
        frame.mode == "P" and "transparency" in frame.info
    )
    frame = frame.convert("RGBA" if has_alpha else "RGB")
    buf = io.BytesIO()
    frame.save(buf, "PNG", optimize=False, compress_level=6)
    return buf.getvalue(), frame.size
