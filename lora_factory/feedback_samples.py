"""Feedback samples: served images a user rated well and captioned, as a folder the retrain flow
writes and the label stage adds to the training set (caption source ``feedback``).

Why a folder of its own, named by its content: the retrain flow reads the feedback store, the
label stage must not (stages read files), and a folder whose name is its content's hash changes
the label stage's settings (``label.feedback_dir``) exactly when the samples change.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import ConfigError

SAMPLES_FILE = "samples.jsonl"
FEEDBACK_SOURCE = "feedback"  # the caption source (provenance) of these samples


@dataclass(frozen=True)
class FeedbackSample:
    """One image the service generated, the caption a user gave it, and where it came from."""

    file_name: str  # <first 16 hex of the image's sha256>.png, in the folder
    caption: str  # the user's corrected caption (formatted by label like a human caption)
    generation_id: str
    feedback_id: int
    rating: int
    prompt: str
    model_version: str

    @property
    def item_id(self) -> str:
        return self.file_name.split(".", 1)[0]


def write_samples(root: Path, images: list[tuple[FeedbackSample, bytes]]) -> Path:
    """``root/<content hash>/`` with the PNGs and ``samples.jsonl``; the same samples give the
    same folder (written once)."""
    lines = "".join(json.dumps(asdict(s), ensure_ascii=False, sort_keys=True) + "\n" for s, _ in images)
    digest = hashlib.sha256(lines.encode("utf-8"))
    for _, png in images:
        digest.update(hashlib.sha256(png).digest())
    folder = Path(root) / digest.hexdigest()[:16]
    if (folder / SAMPLES_FILE).is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    for sample, png in images:
        (folder / sample.file_name).write_bytes(png)
    (folder / SAMPLES_FILE).write_text(lines, encoding="utf-8")  # last: marks the folder complete
    return folder


def sample_file_name(png: bytes) -> str:
    return f"{hashlib.sha256(png).hexdigest()[:16]}.png"


def read_samples(folder: str | Path) -> list[tuple[FeedbackSample, Path]]:
    """The samples of ``label.feedback_dir`` with their image files; one line per problem."""
    folder = Path(folder).expanduser()
    where = f"label.feedback_dir = {str(folder)!r}"
    meta = folder / SAMPLES_FILE
    if not meta.is_file():
        raise ConfigError(f"{where} has no {SAMPLES_FILE}: pass a folder the retrain flow wrote, or unset it")
    out = []
    for lineno, line in enumerate(meta.read_text(encoding="utf-8").splitlines(), start=1):
        try:
            sample = FeedbackSample(**json.loads(line))
        except (ValueError, TypeError) as e:
            raise ConfigError(f"{where}, {SAMPLES_FILE} line {lineno} is not a sample ({e}): "
                              "let the retrain flow rewrite the folder") from None
        image = folder / sample.file_name
        if not image.is_file():
            raise ConfigError(f"{where}: {sample.file_name} (line {lineno}) is missing: "
                              "let the retrain flow rewrite the folder")
        out.append((sample, image))
    return out
