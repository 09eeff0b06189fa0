"""One loaded base pipeline, many concepts' LoRAs: swapped per request with diffusers' adapter
API (``load_lora_weights(adapter_name=...)`` once per version, ``set_adapters`` per request)
instead of reloading the pipeline. A concept's alias is re-read at most every ``refresh_s``
seconds, so moving ``champion`` takes effect without a restart; the old version is unloaded.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lora_factory.errors import FactoryError
from lora_factory.names import short_hash

from .champion import Champion


class BaseMismatchError(FactoryError):
    """A concept's champion was trained on another base model than the one this server holds."""


@dataclass(frozen=True)
class Image:
    concept: str
    model_version: str
    png: bytes


def adapter_name(concept: str, version: str) -> str:
    """A PEFT adapter name: a valid module attribute, distinct per concept and version."""
    return f"c{short_hash(concept)}_v{version}"


def load_base(ref: str, cache_dir: Path, device: str) -> Any:
    from lora_factory.models import load_pipeline

    # The family (sd15, sdxl, flux, sd3) is read from the model's model_index.json by the loader.
    pipe = load_pipeline(ref, None, cache_dir, device=device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def render(pipe: Any, prompt: str, seed: int, steps: int, device: str) -> bytes:
    """One image as PNG bytes; the same prompt, seed and steps give the same bytes on CPU."""
    import torch

    generator = torch.Generator(device).manual_seed(seed)
    image = pipe(prompt, num_inference_steps=steps, generator=generator).images[0]
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


class AdapterPool:
    """Serve each concept's champion from one shared base pipeline (requests are serialized)."""

    def __init__(self, resolve: Callable[[str], Champion], version_of: Callable[[str], str],
                 model_cache: Path, device: str = "cpu", refresh_s: float = 5.0) -> None:
        self._resolve = resolve  # concept -> Champion (downloads the file)
        self._version_of = version_of  # concept -> champion version (a cheap registry query)
        self._model_cache = model_cache
        self._device = device
        self._refresh_s = refresh_s
        self._lock = threading.Lock()
        self._pipe: Any = None
        self._base: str | None = None
        self._loaded: dict[str, Champion] = {}  # concept -> the champion whose adapter is loaded
        self._checked: dict[str, float] = {}  # concept -> when its alias was last read

    def loaded(self) -> dict[str, str]:
        """Concept -> served version (a copy first: the generation thread may be changing it)."""
        return {c: ch.version for c, ch in dict(self._loaded).items()}

    def forget_checks(self) -> None:
        """Make the next request of each concept re-read its alias (admin refresh)."""
        self._checked.clear()

    def _current(self, concept: str) -> Champion:
        held = self._loaded.get(concept)
        now = time.monotonic()
        if held is not None and now - self._checked.get(concept, float("-inf")) < self._refresh_s:
            return held
        if held is not None and self._version_of(concept) == held.version:
            self._checked[concept] = now
            return held
        champion = self._resolve(concept)
        self._checked[concept] = now
        return champion

    def _base_pipe(self, champion: Champion) -> Any:
        if self._pipe is None:
            self._pipe = load_base(champion.base_ref, self._model_cache, self._device)
            self._base = champion.base_ref
        elif champion.base_ref != self._base:
            raise BaseMismatchError(
                f"concept {champion.concept!r} (version {champion.version}) is on base {champion.base_ref!r} "
                f"but this server holds {self._base!r}: serve that base from another server")
        return self._pipe

    def _activate(self, champion: Champion) -> str:
        pipe = self._base_pipe(champion)
        name = adapter_name(champion.concept, champion.version)
        held = self._loaded.get(champion.concept)
        if held is None or held.version != champion.version:
            pipe.load_lora_weights(str(champion.lora_file.parent), weight_name=champion.lora_file.name,
                                   adapter_name=name)
            if held is not None:
                pipe.delete_adapters(adapter_name(held.concept, held.version))
            self._loaded[champion.concept] = champion
        pipe.set_adapters([name], [1.0])
        return name

    def generate(self, concept: str, prompt: str, seed: int, steps: int) -> Image:
        with self._lock:
            champion = self._current(concept)
            self._activate(champion)
            png = render(self._pipe, prompt, seed, steps, self._device)
        return Image(concept, champion.version, png)
