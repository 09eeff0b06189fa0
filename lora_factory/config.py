"""Settings for every stage, as pydantic models.

Why strict models: a typo in a nightly profile must fail loudly before a crawl starts, with the
key's dotted path, not silently fall back to a default six hours later. Every model forbids
unknown keys; ``lora_factory.profiles`` turns validation errors into one readable line.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class Section(BaseModel):
    """Base for config sections: unknown keys are errors, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelsConfig(Section):
    """A reference per model role: a hub id, a local path, or ``tiny:<role>``."""

    text_embedder: str = "sentence-transformers/all-MiniLM-L6-v2"
    clip_scorer: str = "laion/CLIP-ViT-B-32-laion2B-s34B-b79K"
    captioner: str = "Salesforce/blip-image-captioning-base"
    tagger: str = "Qwen/Qwen2.5-0.5B-Instruct"
    base: str = "stable-diffusion-v1-5/stable-diffusion-v1-5"
    base_family: Literal["sd15", "sdxl"] = "sd15"


class CrawlConfig(Section):
    """Where to crawl and how far; the crawl stops cleanly at the first bound reached."""

    source: Literal["demo", "seeds"] = "demo"
    # topic -> seed URLs (pages or sitemaps), used when source == "seeds".
    seeds: dict[str, list[str]] = Field(default_factory=dict)
    allowed_domains: list[str] = Field(default_factory=list)  # empty: the seeds' own domains
    max_pages: int = Field(200, ge=1)
    max_images: int = Field(500, ge=1)
    max_depth: int = Field(3, ge=0)
    timeout_s: float = Field(600.0, gt=0)
    min_image_side: int = Field(16, ge=1)  # smaller images are not worth downloading twice
    max_image_bytes: int = Field(20 * 1024 * 1024, ge=1024)
    allow_private_addresses: bool = False
    obey_robots: bool = True
    honour_noai: bool = True
    user_agent: str = "LoRAFactoryBot/0.1 (+https://github.com/lora-factory/lora-factory)"
    concurrent_requests_per_domain: int = Field(8, ge=1)
    download_delay_s: float = Field(0.0, ge=0)
    autothrottle: bool = True
    demo_seed: int = 0  # the demo site generator's seed


class CurateConfig(Section):
    min_side: int = Field(64, ge=1)  # drop images whose shorter side is below this (too_small)
    exact_dedup: bool = True  # identical decoded pixels -> one representative (exact_duplicate)


class LabelConfig(Section):
    trigger_word: str = Field("lfstyle", min_length=1)
    caption_source: Literal["alt_text"] = "alt_text"
    max_caption_words: int = Field(60, ge=1)


class TuneConfig(Section):
    strategy: Literal["profile"] = "profile"


class TrainConfig(Section):
    resolution: int = Field(512, ge=8)
    rank: int = Field(16, ge=1)
    alpha: float | None = Field(None, gt=0)  # None: alpha == rank
    learning_rate: float = Field(1e-4, gt=0)
    batch_size: int = Field(1, ge=1)
    gradient_accumulation_steps: int = Field(1, ge=1)
    max_steps: int = Field(1500, ge=1)
    lr_scheduler: Literal["constant", "constant_with_warmup", "cosine", "linear"] = "constant"
    lr_warmup_steps: int = Field(0, ge=0)
    optimizer: Literal["adamw", "adamw8bit"] = "adamw"
    max_grad_norm: float = Field(1.0, gt=0)
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    target_modules: list[str] = Field(default_factory=lambda: ["to_k", "to_q", "to_v", "to_out.0"])
    device: Literal["auto", "cpu", "cuda"] = "auto"
    log_every: int = Field(1, ge=1)


class EvaluateConfig(Section):
    # Templates: {trigger} and {topic} are filled in per topic.
    prompts: list[str] = Field(
        default_factory=lambda: ["a photo of {topic}, {trigger}", "{trigger}, {topic} in the evening"]
    )
    num_inference_steps: int = Field(25, ge=1)
    guidance_scale: float = Field(7.5, ge=0)
    resolution: int | None = Field(None, ge=8)  # None: the training resolution
    seed: int = 1234


class DeployConfig(Section):
    registered_model_name: str = Field("lora-factory", min_length=1)
    # The gate: promote to the "champion" alias when LoRA CLIP-T minus base CLIP-T >= this.
    min_clip_t_delta: float = 0.0
    candidate_alias: str = "candidate"
    champion_alias: str = "champion"


class StoreConfig(Section):
    # A local folder or s3://bucket/prefix. Empty: <home>.
    root: str = ""
    s3_endpoint_url: str | None = None  # for S3-compatible servers (MinIO, moto)


class TrackingConfig(Section):
    uri: str = ""  # empty: sqlite:///<home>/mlflow.db
    experiment: str = Field("lora-factory", min_length=1)


class FactoryConfig(Section):
    """One factory run's settings: a profile plus overrides."""

    profile: str = "tiny"
    home: str = ""  # local data dir: model cache, MLflow DB, work dirs. Empty: ./lora-factory-data
    seed: int = 42
    models: ModelsConfig = Field(default_factory=ModelsConfig)
    crawl: CrawlConfig = Field(default_factory=CrawlConfig)
    curate: CurateConfig = Field(default_factory=CurateConfig)
    label: LabelConfig = Field(default_factory=LabelConfig)
    tune: TuneConfig = Field(default_factory=TuneConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    deploy: DeployConfig = Field(default_factory=DeployConfig)
    store: StoreConfig = Field(default_factory=StoreConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)

    @field_validator("profile")
    @classmethod
    def _profile_name(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be empty")
        return v
