"""What the tuner knows of a dataset: curate's ``stats.json`` and label's caption statistics,
reduced to the few numbers the rules and the history use.

Inside the factory the files come through the catalog (which validates them); outside it
(``lora-factory tune --stats FILE``) ``read_stats_file`` gives each bad file one line.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from lora_factory.errors import FactoryError
from lora_factory.schemas import CURATE_STATS_VERSION, CaptionStats, CurateStats, Diversity

# Domains whose images are art rather than photographs of a thing: a set of them is most likely
# a style (curate's zero-shot CLIP domain, ``curate.domain_prompts``).
STYLE_DOMAINS = ("art", "anime", "illustration", "sketch")


SCHEMA_VERSIONS: dict[type[BaseModel], int] = {CurateStats: CURATE_STATS_VERSION, CaptionStats: 1}


class StatsError(FactoryError):
    """A statistics file is missing, malformed or of another schema version."""


@dataclass(frozen=True)
class TuneStats:
    """The dataset as the rules see it. Diversities are mean pairwise cosine distances."""

    num_images: int
    caption_coverage: float = 1.0
    words_mean: float = 0.0
    tags_per_caption: float = 0.0
    text_diversity: float | None = None
    visual_diversity: float | None = None
    short_side_median: float | None = None
    non_square_share: float = 0.0
    domain: str | None = None
    task_type: str | None = None  # from the labels' concept summary, when label knew it

    def features(self) -> dict[str, float]:
        """The numbers past runs are compared on (logged with every tune run)."""
        out = {"num_images": float(self.num_images), "caption_coverage": self.caption_coverage,
               "words_mean": self.words_mean}
        for name in ("text_diversity", "visual_diversity"):
            value = getattr(self, name)
            if value is not None and math.isfinite(value):
                out[name] = float(value)
        return out


def _non_square(histogram: dict[str, int]) -> float:
    total = sum(histogram.values())
    return (total - histogram.get("square", 0)) / total if total else 0.0


def _distance(d: Diversity | None) -> float | None:
    return d.mean_pairwise_distance if d is not None else None


def stats_from(curate: CurateStats | None, captions: CaptionStats | None) -> TuneStats:
    """Combine the two files; caption statistics describe the images that train (label may drop
    some that curate kept), so their count and captions win."""
    if captions is not None:
        tags = sum(captions.tag_frequency.values()) / captions.captioned if captions.captioned else 0.0
        own = {"num_images": captions.num_images, "caption_coverage": captions.coverage,
               "words_mean": captions.words_mean, "tags_per_caption": tags, "task_type": captions.task_type}
    elif curate is not None:
        own = {"num_images": curate.num_images, "caption_coverage": curate.caption_coverage,
               "words_mean": curate.caption_words_mean}
    else:
        raise StatsError("no statistics given: pass curate's stats.json (--stats) and/or label's caption_stats.json")
    if curate is None:
        return TuneStats(**own)
    return TuneStats(
        **own,
        text_diversity=_distance(curate.text_diversity),
        visual_diversity=_distance(curate.visual_diversity),
        short_side_median=curate.resolution_short_side_median if curate.num_images else None,
        non_square_share=_non_square(curate.aspect_histogram),
        domain=curate.estimated_domain.domain if curate.estimated_domain else None,
    )


def read_stats_file(path: Path, model: type[BaseModel], what: str) -> Any:
    """A statistics file outside a run, validated by ``model``; one line per kind of problem."""
    path = Path(path)
    if not path.is_file():
        raise StatsError(f"{what} file {path} does not exist: pass the {what} of a run "
                         "(<run>/curate/stats.json, <run>/label/caption_stats.json)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise StatsError(f"{what} file {path} is not valid JSON ({e}): regenerate it by re-running its stage") from None
    if not isinstance(data, dict):
        raise StatsError(f"{what} file {path} holds {type(data).__name__}, not a mapping of statistics")
    wanted, version = SCHEMA_VERSIONS.get(model), data.get("schema_version", 0)
    if wanted is not None and version != wanted:
        age = "older than" if isinstance(version, int) and version < wanted else "not"
        raise StatsError(f"{what} file {path} has schema_version {version!r}, {age} the {wanted} this version "
                         "reads: regenerate it by re-running its stage with this version of the factory")
    try:
        return model.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "file"
        got = first.get("input")
        shown = "" if isinstance(got, dict) else f" (got {got!r})"
        raise StatsError(f"{what} file {path}: {where}: {first['msg'].removeprefix('Value error, ')}{shown}: "
                         "re-run the stage that writes it with this version of the factory") from None
