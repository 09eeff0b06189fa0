"""The column schemas of every table a stage writes, in one place.

Why here and not in the stage that writes each table: every later stage reads them, and a stage
may not import another stage. The catalog (``lora_factory.catalog``) names each table's file;
this module says what is in it.
"""

from __future__ import annotations

from typing import Any, Literal

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# crawl/items.parquet: one row per image kept by the crawl, with its provenance.
ITEM_SCHEMA = pa.schema(
    [
        pa.field("item_id", pa.string(), nullable=False),  # sha256 hex of the image bytes
        pa.field("image_path", pa.string(), nullable=False),  # relative to the crawl dir
        pa.field("image_url", pa.string(), nullable=False),
        pa.field("page_url", pa.string(), nullable=False),
        pa.field("page_title", pa.string()),
        pa.field("alt_text", pa.string()),
        pa.field("title_text", pa.string()),
        pa.field("figure_caption", pa.string()),
        pa.field("surrounding_text", pa.string()),
        pa.field("topic", pa.string()),
        pa.field("license", pa.string(), nullable=False),  # SPDX-ish id or "unknown"
        pa.field("license_url", pa.string()),
        pa.field("author", pa.string()),
        pa.field("robots", pa.string()),  # the opt-out decision that let it through
        pa.field("crawl_time", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("width", pa.int32(), nullable=False),
        pa.field("height", pa.int32(), nullable=False),
        pa.field("num_bytes", pa.int64(), nullable=False),
        pa.field("mime_type", pa.string(), nullable=False),
        pa.field("other_urls", pa.list_(pa.string())),  # same bytes seen at these image URLs
    ]
)

# <stage>/decisions.parquet (and curate/rejected.parquet): one keep/drop verdict per item.
DECISION_SCHEMA = pa.schema(
    [
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("stage", pa.string(), nullable=False),
        pa.field("decision", pa.string(), nullable=False),  # "keep" | "drop"
        pa.field("reason", pa.string()),  # one of manifest.DROP_REASONS (or a stage's own)
        pa.field("score", pa.float64()),  # the value the reason was judged on, if any
        pa.field("dup_of", pa.string()),  # item_id of the representative kept instead
        pa.field("detail", pa.string()),  # a human sentence: "12x12 px < min_side 64"
    ]
)

# crawl/pages.parquet: every page requested, parsed or not, and why.
PAGE_SCHEMA = pa.schema(
    [
        pa.field("url", pa.string(), nullable=False),
        pa.field("status", pa.int32()),  # null when no response arrived
        pa.field("depth", pa.int32(), nullable=False),
        pa.field("title", pa.string()),
        pa.field("topic", pa.string()),
        pa.field("n_images", pa.int32(), nullable=False),
        # "parsed" | "rejected" (quality, relevance) | "skipped" (not HTML) | "error"
        pa.field("decision", pa.string(), nullable=False),
        # why not parsed: http_404, robots_txt, private_address, ad_farm, language, off_topic...;
        # for a parsed page an opt-out note: noai (its images were not downloaded)
        pa.field("reason", pa.string()),
        pa.field("detail", pa.string()),
        pa.field("language", pa.string()),
        pa.field("text_entropy", pa.float64()),
        pa.field("ad_ratio", pa.float64()),
        pa.field("relevance", pa.float64()),
    ]
)

# crawl/rejected.parquet: image URLs the crawl did not keep (no item id: often never downloaded).
REJECTED_SCHEMA = pa.schema(
    [
        pa.field("url", pa.string(), nullable=False),  # the image URL
        pa.field("page_url", pa.string()),
        pa.field("topic", pa.string()),
        pa.field("reason", pa.string(), nullable=False),  # too_small, not_image, undecodable...
        pa.field("detail", pa.string()),
    ]
)

# curate/dataset.parquet: the kept items with every measure curation judged them on.
CURATE_SCORE_FIELDS = [
    pa.field("caption_text", pa.string()),  # the cleaned page text judged by the text filters
    pa.field("caption_field", pa.string()),  # which item field it came from
    pa.field("language", pa.string()),
    pa.field("exif_rotated", pa.bool_()),  # width/height are after EXIF orientation
    pa.field("sharpness", pa.float64()),  # variance of the Laplacian
    pa.field("brightness", pa.float64()),
    pa.field("contrast", pa.float64()),
    pa.field("entropy", pa.float64()),
    pa.field("phash", pa.string()),  # 64-bit perceptual hash, hex
    pa.field("text_topic", pa.float64()),  # MiniLM cosine of text and topic
    pa.field("clip_image_text", pa.float64()),
    pa.field("clip_image_topic", pa.float64()),
    pa.field("quality_rank", pa.int64()),  # 0 = best; duplicates keep the best-ranked copy
]
DATASET_SCHEMA = pa.schema(
    list(ITEM_SCHEMA) + [pa.field("pixel_sha256", pa.string())] + CURATE_SCORE_FIELDS
)

# label/labels.parquet: the caption each labelled image trains with, where it came from, the
# candidates it was chosen among (with their CLIP image-text scores) and the tagger's tags.
CANDIDATE_TYPE = pa.struct(
    [
        pa.field("source", pa.string()),  # alt_text, figure_caption, title_text, captioner, vlm, topic
        pa.field("text", pa.string()),
        pa.field("score", pa.float64()),  # CLIP image-text cosine; null when not re-ranked
        pa.field("hallucination", pa.bool_()),  # far below the other candidates' scores
    ]
)
LABELS_SCHEMA = pa.schema(
    [
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("file_name", pa.string(), nullable=False),
        pa.field("caption", pa.string(), nullable=False),
        pa.field("caption_source", pa.string(), nullable=False),  # a candidate source, or "human"
        pa.field("machine_caption", pa.string()),  # the chosen caption before a review edit
        pa.field("caption_score", pa.float64()),  # the winner's CLIP score, when re-ranked
        pa.field("caption_tokens", pa.int32()),  # with the base model's tokenizer
        pa.field("trimmed", pa.bool_()),  # cut at a tag or clause boundary to fit the budget
        pa.field("candidates", pa.list_(CANDIDATE_TYPE)),
        pa.field("subject", pa.list_(pa.string())),  # tags: 1-3 core subjects
        pa.field("style", pa.string()),
        pa.field("movement", pa.string()),
        pa.field("medium", pa.string()),
        pa.field("keywords", pa.list_(pa.string())),
        pa.field("tag_source", pa.string()),  # openai, local, keywords (the fallback), none
        pa.field("license", pa.string()),
        pa.field("author", pa.string()),
        pa.field("page_url", pa.string()),
    ]
)

# label/captions.csv: the review sheet a person edits (the first columns; more are allowed).
REVIEW_COLUMNS = ("item_id", "file_name", "caption", "keep", "caption_source", "machine_caption",
                  "license", "page_url")


class CaptionStats(BaseModel):
    """label/caption_stats.json: what the tuner needs to know about the captions.

    ``schema_version`` rises when a field changes meaning; readers refuse newer/older versions
    they cannot read with one line instead of guessing.
    """

    model_config = ConfigDict(extra="forbid")

    schema_version: Literal[1] = 1
    num_images: int = Field(ge=0)
    captioned: int = Field(ge=0)  # images with a non-empty caption besides the trigger word
    coverage: float = Field(ge=0, le=1)
    words_mean: float = Field(ge=0)
    words_median: float = Field(ge=0)
    words_max: int = Field(ge=0)
    tokens_max: int | None = Field(None, ge=0)  # with the base model's tokenizer, when known
    over_token_budget: int = Field(0, ge=0)  # captions that were over the budget (and were trimmed)
    sources: dict[str, int] = Field(default_factory=dict)  # caption source -> images
    tag_frequency: dict[str, int] = Field(default_factory=dict)  # comma-separated tag -> images
    trigger_word: str
    concept_summary: str | None = None  # one line about the dataset's concept, when known
    task_type: Literal["subject", "style", "concept"] | None = None
    # Added within version 1 (optional, so version-1 readers of the fields above are unaffected):
    token_budget: int | None = Field(None, ge=1)  # tokens a caption may use (trigger included)
    caption_style: Literal["natural", "tags"] | None = None
    traits: list[str] = Field(default_factory=list)  # left out of captions (the trigger absorbs them)
    # The tagger's tags per field (subject, style, movement, medium, keywords) -> tag -> images.
    tag_fields: dict[str, dict[str, int]] = Field(default_factory=dict)
    tagger: dict[str, int] = Field(default_factory=dict)  # calls: valid, retried, fallback, cached...
    hallucinations: int = Field(0, ge=0)  # candidates flagged far below the others' CLIP score
    human_captions: int = Field(0, ge=0)  # captions taken from the review file

    def concept_tags(self, n: int) -> list[str]:
        """The ``n`` most frequent tags of the concept, most frequent first (ties by name).

        Why not ``tag_frequency`` alone: it counts comma pieces, which are tags only in tag-style
        captions; in sentences they are clauses, and "the top tags" of a natural-language set would
        be whole captions. Those sets use the tagger's subject and keyword tags instead."""
        if self.caption_style == "tags" or not self.tag_fields:
            counts = dict(self.tag_frequency)
        else:
            counts = {}
            for name in ("subject", "keywords"):
                for tag, k in self.tag_fields.get(name, {}).items():
                    counts[tag] = counts.get(tag, 0) + k
        trigger = self.trigger_word.lower()
        ranked = sorted(((t, k) for t, k in counts.items() if t.lower() != trigger), key=lambda kv: (-kv[1], kv[0]))
        return [t for t, _ in ranked[:n]]


# evaluate/eval.json: the contract between the evaluate stage and the gate, the registry, the
# tuner's history and the model card. Evaluate may add detail (``extra="allow"``: per-prompt
# tables, grids ...); the fields below keep their meaning within a schema version.
SCORE_KEYS = {
    "overall_score": "the documented weighted score the gate compares with the champion's",
    "fidelity_gain": "LoRA minus base similarity to the training images (CLIP-I / DINO / pixel embeddings)",
    "adherence_delta": "LoRA minus base CLIP-T on the same prompts and seeds (prompt adherence)",
    "diversity": "mean pairwise distance of the LoRA images' embeddings (low: mode collapse)",
    "copy_risk": "share of LoRA images nearer than the near-copy threshold to a training image",
    "leakage": "how far the LoRA moves images of the class prompt without the trigger word",
    "aesthetic_delta": "LoRA minus base aesthetic score (evaluate.aesthetic_head; a reference, not in overall_score)",
}


class MetricPair(BaseModel):
    """One metric for base and LoRA, on the same prompts, seeds and scheduler."""

    model_config = ConfigDict(extra="forbid")

    base: float | None = None
    lora: float | None = None

    @property
    def gain(self) -> float | None:
        return None if self.base is None or self.lora is None else self.lora - self.base


class Finding(BaseModel):
    """A named problem (``black_images``, ``zero_lora``, ``identical_to_base``, ``flat_loss``,
    ``portability``, ``random_scorer`` ...); an ``error`` blocks promotion."""

    model_config = ConfigDict(extra="forbid")

    code: str = Field(min_length=1)
    severity: Literal["error", "warning", "info"]
    message: str
    items: list[str] = Field(default_factory=list)  # the prompts, images or keys concerned


class ThresholdCheck(BaseModel):
    """One configured threshold applied to one score."""

    model_config = ConfigDict(extra="forbid")

    score: str
    op: Literal[">=", "<="]
    threshold: float
    value: float | None
    passed: bool


class EvalResult(BaseModel):
    model_config = ConfigDict(extra="allow")

    schema_version: Literal[2] = 2
    base_ref: str
    family: str
    lora_path: str
    scorers: dict[str, str] = Field(default_factory=dict)  # role -> model reference
    random_scorers: list[str] = Field(default_factory=list)  # roles whose numbers mean nothing
    metrics: dict[str, MetricPair] = Field(default_factory=dict)  # clip_t, clip_i, dino, ...
    scores: dict[str, float | None] = Field(default_factory=dict)  # SCORE_KEYS
    thresholds: list[ThresholdCheck] = Field(default_factory=list)
    findings: list[Finding] = Field(default_factory=list)
    portability: dict[str, Any] = Field(default_factory=dict)  # {"passed": bool, ...}
    verdict: Literal["pass", "fail"]

    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]


class Diversity(BaseModel):
    """How spread out a set of embeddings is (see ``tasks/curate/stats.py``)."""

    model_config = ConfigDict(extra="forbid")

    mean_pairwise_distance: float | None = None  # mean 1 - cosine over all pairs
    effective_rank: float | None = None  # exp of the covariance spectrum's entropy
    pca_entropy: float | None = None  # that entropy over its maximum, 0..1


class EstimatedDomain(BaseModel):
    model_config = ConfigDict(extra="forbid")

    domain: str | None = None  # the most likely of curate.domain_prompts
    probabilities: dict[str, float] = Field(default_factory=dict)


CURATE_STATS_VERSION = 1


class CurateStats(BaseModel):
    """curate/stats.json: the kept set's size, diversity, captions, aspect ratios and domain.

    ``schema_version`` rises when a field changes meaning; a file of another version is refused
    with one line (re-run curate) instead of being guessed at.
    """

    model_config = ConfigDict(extra="forbid")

    schema_version: int
    num_images: int = Field(ge=0)
    num_candidates: int | None = Field(None, ge=0)
    caption_coverage: float = Field(ge=0, le=1)
    caption_words_mean: float = Field(ge=0)
    caption_words_median: float = Field(ge=0)
    resolution_short_side_median: float = Field(ge=0)
    aspect_histogram: dict[str, int] = Field(default_factory=dict)
    models: dict[str, str | None] = Field(default_factory=dict)
    text_diversity: Diversity | None = None
    visual_diversity: Diversity | None = None
    visual_variance: float | None = None
    estimated_domain: EstimatedDomain | None = None

    @model_validator(mode="before")
    @classmethod
    def _unversioned_is_version_0(cls, data: Any) -> Any:
        """Files written before the schema was versioned have no ``schema_version``."""
        if isinstance(data, dict) and "schema_version" not in data:
            return {**data, "schema_version": 0}
        return data

    @field_validator("schema_version")
    @classmethod
    def _known_version(cls, v: int) -> int:
        if v != CURATE_STATS_VERSION:
            age = "older" if v < CURATE_STATS_VERSION else "newer"
            raise ValueError(f"schema_version {v} is {age} than the {CURATE_STATS_VERSION} this version reads")
        return v


# label/doctor.json and `lora-factory inspect`: the dataset doctor's report. Bump the version on
# any change a reader could notice; readers check it.
DOCTOR_SCHEMA_VERSION = 1
DOCTOR_SCORES = ("relevance", "consistency", "diversity", "quality")


class DoctorFinding(BaseModel):
    """One problem of the dataset: what, how bad, which files, and what to do about it."""

    model_config = ConfigDict(extra="forbid")

    code: str = Field(min_length=1)
    severity: Literal["error", "warning", "info"]
    title: str
    count: int = Field(ge=0)
    files: list[str]
    fix: str = Field(min_length=1)


class DoctorScore(BaseModel):
    model_config = ConfigDict(extra="forbid")

    value: float = Field(ge=0, le=10)
    formula: str
    parts: dict[str, float]


class DoctorImage(BaseModel):
    """One image as the dashboard draws it (embedding map position, cluster, flags)."""

    model_config = ConfigDict(extra="forbid")

    file: str
    sha256: str
    ok: bool
    caption: str | None
    width: int
    height: int
    cluster: int  # -1: not embedded (undecodable)
    x: float
    y: float
    relevance: float | None  # CLIP image-concept cosine
    flags: list[str]


class DoctorReport(BaseModel):
    model_config = ConfigDict(extra="forbid")

    schema_version: Literal[1] = DOCTOR_SCHEMA_VERSION
    source: str
    layout: Literal["kohya", "imagefolder", "flat"]
    concept: str
    trigger_word: str | None
    clip_model: str
    scores_meaningful: bool  # False: a random-weight (tiny:) CLIP made the embeddings
    note: str
    counts: dict[str, int]
    scores: dict[Literal["relevance", "consistency", "diversity", "quality"], DoctorScore]
    findings: list[DoctorFinding]
    images: list[DoctorImage]
    duplicate_groups: list[list[str]]  # kept file first
    word_frequency: dict[str, int]
    # doctor.narrative: a paragraph on the findings by the label stage's LLM endpoint. Optional and
    # null by default, so version-1 documents without it still read (the version stays 1).
    narrative: str | None = None
