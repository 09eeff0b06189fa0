"""Captions from the pixels: a transformers image-to-text model, and optionally a vision-language
model behind an OpenAI-compatible endpoint.

Why both: a local captioner (BLIP by default; any ``from_pretrained`` image-text-to-text model)
always runs and costs nothing; a VLM (vLLM, Ollama, llama.cpp server) writes richer sentences
but may invent details, which the CLIP re-ranking then catches. Images are read in batches so a
large dataset never sits in memory at once.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

from PIL import Image

from lora_factory.llm_client import ChatClient, EndpointError, map_bounded

VLM_MAX_SIDE = 768  # px; what VLM servers resize to anyway, and a small request


def captioner_captions(paths: list[Path], captioner: Any, batch_size: int, max_new_tokens: int) -> list[str]:
    """One caption per image from a ``lora_factory.models.Captioner``."""
    out: list[str] = []
    for start in range(0, len(paths), batch_size):
        images = []
        for path in paths[start : start + batch_size]:
            with Image.open(path) as im:
                images.append(im.convert("RGB"))
        out += captioner.caption(images, max_new_tokens=max_new_tokens, batch_size=batch_size)
    return out


def image_data_uri(path: Path, max_side: int = VLM_MAX_SIDE) -> str:
    """The image as a JPEG ``data:`` URI, at most ``max_side`` px (deterministic bytes)."""
    with Image.open(path) as im:
        im = im.convert("RGB")
        im.thumbnail((max_side, max_side))
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=90)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def vlm_caption(client: ChatClient, path: Path, prompt: str) -> str | None:
    """The VLM's one-line caption of ``path``; ``None`` when the endpoint failed."""
    message = {"role": "user", "content": [{"type": "text", "text": prompt},
                                           {"type": "image_url", "image_url": {"url": image_data_uri(path)}}]}
    try:
        reply = client.chat([message])
    except EndpointError:
        return None
    line = next((ln for ln in reply.splitlines() if ln.strip()), "")
    return line.strip().strip('"').strip() or None


def vlm_captions(paths: list[Path], client: ChatClient, prompt: str) -> list[str | None]:
    return map_bounded(lambda p: vlm_caption(client, p, prompt), paths, client.cfg.max_concurrency,
                       "label: VLM captions")
