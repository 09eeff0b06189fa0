"""Settings for every stage, as pydantic models.

Why strict models: a typo in a nightly profile must fail loudly before a crawl starts, with the
key's dotted path, not silently fall back to a default six hours later. Every model forbids
unknown keys; ``lora_factory.profiles`` turns validation errors into one readable line.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class Section(BaseModel):
    """Base for config sections: unknown keys are errors, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelsConfig(Section):
    """A reference per model role: a hub id, a local path, or ``tiny:<role>``."""

    text_embedder: str = "sentence-transformers/all-MiniLM-L6-v2"
    clip_scorer: str = "laion/CLIP-ViT-B-32-laion2B-s34B-b79K"
    dino_scorer: str = "facebook/dinov2-small"  # evaluate's DINO subject fidelity (embedding "dino")
    captioner: str = "Salesforce/blip-image-captioning-base"
    tagger: str = "Qwen/Qwen2.5-0.5B-Instruct"
    base: str = "stable-diffusion-v1-5/stable-diffusion-v1-5"
    # serving's output filter (serve.safety_filter); loaded only when that is on
    safety_checker: str = "CompVis/stable-diffusion-safety-checker"
    # None: read from the base model's model_index.json when the run starts (and stored in the
    # run's config); set, it must be the model's own family.
    base_family: Literal["sd15", "sdxl", "flux", "sd3"] | None = None


class CrawlConfig(Section):
    """Where to crawl and how far; the crawl stops cleanly at the first bound reached."""

    source: Literal["demo", "seeds", "wikimedia", "openverse", "dataset", "urls"] = "demo"
    # source == "urls": a .txt/.csv/.parquet list of image URLs (url, caption, license columns).
    urls_file: str | None = None
    # source == "dataset" (`run --dataset PATH`): an existing folder or zip (kohya, imagefolder,
    # flat) is taken as the crawl; its licence: this, else a licence.txt in it, else "unknown".
    dataset: str | None = None
    dataset_license: str | None = None
    # topic -> seed URLs (pages or sitemaps), used when source == "seeds".
    seeds: dict[str, list[str]] = Field(default_factory=dict)
    # API sources (source == "wikimedia" / "openverse"): images found per topic, fetched directly.
    wikimedia_api_url: str = "https://commons.wikimedia.org/w/api.php"
    openverse_api_url: str = "https://api.openverse.org/v1/"
    api_max_results: int = Field(50, ge=1, le=500)  # candidates asked for per topic
    allowed_domains: list[str] = Field(default_factory=list)  # empty: the seeds' own domains
    # Bounds: the crawl stops at the first one reached and names it as its finish reason.
    max_pages: int = Field(200, ge=1)
    max_images: int = Field(500, ge=1)
    max_images_per_topic: int | None = Field(None, ge=1)  # None: only max_images applies
    max_depth: int = Field(3, ge=0)
    timeout_s: float = Field(600.0, gt=0)
    # Images: what is downloaded (bytes) and kept (decoded pixels, resolution).
    min_image_side: int = Field(16, ge=1)  # smaller images are not worth downloading twice
    max_image_bytes: int = Field(20 * 1024 * 1024, ge=1024)  # aborted beyond this (too_large)
    warn_image_bytes: int = Field(8 * 1024 * 1024, ge=1024)  # logged beyond this
    max_image_pixels: int = Field(40_000_000, ge=1)  # width x height; beyond: too_many_pixels
    # Safety.
    allow_private_addresses: bool = False  # any non-public address (private, loopback, ...)
    allow_loopback: bool = False  # only 127.0.0.0/8 and ::1 (the demo site, tests, benches)
    download_timeout_s: float = Field(30.0, gt=0)
    max_redirects: int = Field(5, ge=0)
    # Politeness.
    obey_robots: bool = True
    honour_noai: bool = True  # X-Robots-Tag / meta robots noai, noimageai
    user_agent: str = "LoRAFactoryBot/0.1 (+https://github.com/lora-factory/lora-factory)"
    concurrent_requests: int = Field(16, ge=1)
    concurrent_requests_per_domain: int = Field(8, ge=1)
    download_delay_s: float = Field(0.0, ge=0)
    autothrottle: bool = True
    # Page quality: pages failing a check are recorded in pages.parquet with the reason and are
    # neither mined for images nor followed.
    allowed_languages: list[str] = Field(default_factory=lambda: ["en"])  # empty: any language
    min_text_entropy: float = Field(3.0, ge=0)  # bits per word; keyword-stuffed pages score low
    max_ad_ratio: float = Field(0.6, gt=0, le=1)  # share of text in links and ad blocks
    # Relevance (MiniLM cosine similarity of link/page text to the topic); None: off.
    relevance_threshold: float | None = Field(None, ge=-1, le=1)
    relevance_model: str = "sentence-transformers/all-MiniLM-L6-v2"
    demo_seed: int = 0  # the demo site generator's seed
    # Distributed mode (scrapy-redis): with a Redis URL, crawler processes of the same run share
    # one frontier and seen-set in Redis under <redis_key_prefix>:<run id>:*; see spiders.workers.
    redis_url: str | None = None
    redis_key_prefix: str = "lora-factory"
    # Crawler processes the crawl task starts on the shared Redis frontier (needs redis_url).
    workers: int = Field(1, ge=1, le=64)

    @model_validator(mode="after")
    def _dataset_needs_a_path(self) -> CrawlConfig:
        if self.source == "dataset" and not (self.dataset or "").strip():
            raise ValueError("crawl.source 'dataset' needs crawl.dataset (a folder or .zip): use `run --dataset PATH`")
        if self.source == "urls" and not (self.urls_file or "").strip():
            raise ValueError("crawl.source 'urls' needs crawl.urls_file (a .txt, .csv or .parquet list of image URLs)")
        return self

    @model_validator(mode="after")
    def _workers_need_redis(self) -> CrawlConfig:
        if self.workers > 1 and not self.redis_url:
            raise ValueError("crawl.workers > 1 needs crawl.redis_url (the shared frontier)")
        return self


class CurateConfig(Section):
    """Every curation filter with its threshold; ``None`` (or ``false``) turns a filter off.

    Each filter writes its reason and the score it judged on per item (see ``tasks.curate``).
    CLIP thresholds are per model (``clip_thresholds`` keyed by the ``models.clip_scorer``
    reference), because cosines are not comparable across CLIP models; a model without an entry
    gets no CLIP alignment or CLIP near-duplicate filtering (its embeddings still feed the stats).
    """

    # Technical quality
    min_side: int = Field(64, ge=1)  # shorter side below this: too_small
    max_pixels: int | None = Field(None, ge=1)  # more pixels than this: too_large (decompression bombs)
    max_aspect: float | None = Field(3.0, ge=1.0)  # long/short side above this: bad_aspect
    min_sharpness: float | None = Field(20.0, ge=0)  # variance of the Laplacian (<=512 px grey): blurry
    min_brightness: float | None = Field(20.0, ge=0, le=255)  # mean luma below: too_dark
    max_brightness: float | None = Field(240.0, ge=0, le=255)  # mean luma above: overexposed
    max_clipped_fraction: float | None = Field(0.9, gt=0, le=1)  # share of pixels black or white
    min_contrast: float | None = Field(4.0, ge=0)  # std of luma below: low_information
    min_entropy: float | None = Field(0.3, ge=0, le=8)  # luma histogram entropy (bits): low_information
    # Text: cleaning is always on; these decide drops
    languages: list[str] | None = Field(default_factory=lambda: ["en"])  # None: any language
    language_min_words: int = Field(4, ge=1)  # shorter texts are not judged (langdetect is unreliable)
    language_min_confidence: float = Field(0.9, gt=0, le=1)
    drop_ad_text: bool = True  # texts like "advertisement", "sponsored", "buy now": ad
    require_text: bool = False  # no usable text at all: no_caption
    min_text_topic: float | None = Field(None, ge=-1, le=1)  # MiniLM text-topic cosine: off_topic
    # Duplicates
    exact_dedup: bool = True  # identical decoded pixels: exact_duplicate
    phash_max_distance: int | None = Field(12, ge=0, le=64)  # pHash Hamming bits: near_duplicate
    dhash_max_distance: int = Field(10, ge=0, le=64)  # ... and dHash bits (both must hold)
    near_dup_max_aspect_change: float = Field(0.1, ge=0)  # |log aspect ratio| difference
    text_dedup_threshold: float | None = Field(0.97, gt=0, le=1)  # MiniLM cosine: semantic_duplicate
    text_dedup_image_check: bool = True  # also require similar pictures (see text_dedup_max_phash)
    text_dedup_max_phash: int = Field(14, ge=0, le=64)  # when CLIP has no image_duplicate threshold
    dedup_exact_max_items: int = Field(20000, ge=2)  # above: SemDeDup cluster-then-compare
    dedup_items_per_cluster: int = Field(1000, ge=10)  # k-means clusters = n / this
    # CLIP alignment and near-duplicates, per CLIP model reference
    clip_thresholds: dict[str, dict[Literal["image_text", "image_topic", "image_duplicate"], float | None]] = Field(
        default_factory=lambda: {
            # LAION-5B used image-text cosine 0.28 with ViT-B/32.
            "laion/CLIP-ViT-B-32-laion2B-s34B-b79K": {"image_text": 0.28, "image_topic": 0.2, "image_duplicate": 0.96},
            "openai/clip-vit-base-patch32": {"image_text": 0.28, "image_topic": 0.2, "image_duplicate": 0.96},
        }
    )
    topic_prompt: str = Field("a photo of {topic}", min_length=1)
    domain_prompts: dict[str, str] = Field(
        default_factory=lambda: {
            "photo": "a photo", "art": "a painting", "anime": "an anime drawing",
            "illustration": "a digital illustration", "3d": "a 3d render", "sketch": "a pencil sketch",
            "screenshot": "a screenshot with text",
        }
    )
    clip_batch_size: int = Field(64, ge=1)
    # Balance
    max_per_composition: int | None = Field(None, ge=1)  # near-identical compositions: composition_cap
    composition_max_phash: int = Field(12, ge=0, le=64)
    max_source_share: float | None = Field(None, gt=0, le=1)  # per page domain: source_cap
    # Report
    report_thumbnails_per_reason: int = Field(48, ge=0)


class LlmEndpointConfig(Section):
    """An OpenAI-compatible chat endpoint (vLLM, Ollama, llama.cpp server, OpenAI itself).

    The API key is read from the environment variable *named* by ``api_key_env`` when a request
    is made; the key itself is never part of the config, so it cannot reach run.json or MLflow.
    """

    base_url: str = "http://127.0.0.1:8000/v1"
    model: str = ""  # required when the endpoint is used
    api_key_env: str | None = "LORA_FACTORY_LLM_API_KEY"  # None: no Authorization header
    timeout_s: float = Field(60.0, gt=0)  # per request
    max_concurrency: int = Field(8, ge=1)  # requests in flight
    requests_per_second: float | None = Field(None, gt=0)  # None: no rate limit
    max_retries: int = Field(4, ge=0)  # 429, 5xx, timeouts, refused connections
    backoff_s: float = Field(1.0, ge=0)  # first wait; doubles per retry (Retry-After wins)
    max_backoff_s: float = Field(30.0, ge=0)
    schema_retries: int = Field(1, ge=0)  # invalid output: ask again with the validation error
    max_tokens: int = Field(400, ge=16)
    temperature: float = Field(0.0, ge=0, le=2)

    @field_validator("api_key_env")
    @classmethod
    def _a_variable_name(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", v):
            raise ValueError("must be the NAME of an environment variable holding the key, not the key")
        return v


CaptionSource = Literal["alt_text", "figure_caption", "title_text", "captioner", "vlm"]


class LabelConfig(Section):
    """Captions, tags, the licence policy and the review loop (see ``tasks.label``).

    Candidates come from ``caption_sources``; with ``rerank`` the one the CLIP scorer matches
    best to the image wins. The trigger word goes where ``[trigger]`` stands in ``template``
    (exactly once) and the caption is trimmed to the base model's text-encoder token budget.
    """

    trigger_word: str = Field("lfstyle", min_length=1)
    template: str = "[trigger], [caption]"  # [trigger] and [caption] exactly once each
    caption_style: Literal["natural", "tags"] = "natural"  # tags: the tagger's comma-separated tags
    caption_sources: list[CaptionSource] = Field(
        default_factory=lambda: ["alt_text", "figure_caption", "title_text", "captioner"], min_length=1)
    rerank: bool = True  # CLIP picks the caption; false: the first source (in the order above) that has one
    hallucination_margin: float = Field(0.1, ge=0)  # CLIP score this far below the others': flagged
    max_caption_words: int = Field(60, ge=1)  # page texts are cut to this many words first
    max_tokens: int | None = Field(None, ge=1)  # None: the base model's tokenizer budget (77 for CLIP)
    # Subject LoRAs: intrinsic traits left out of captions, so the trigger word absorbs them.
    traits: list[str] = Field(default_factory=list)
    traits_from_summary: bool = False  # add the traits the tagger's concept summary names
    task_type: Literal["subject", "style", "concept"] | None = None
    captioner_batch_size: int = Field(8, ge=1)
    captioner_max_new_tokens: int = Field(30, ge=4)
    # Tags: core subject, style, movement, medium, keywords; and a one-line concept summary.
    tagger: Literal["openai", "local", "keywords", "none"] = "local"  # local: models.tagger
    tag_fallback: Literal["keywords", "none"] = "keywords"  # when the tagger fails or is unreachable
    tag_batch_size: int = Field(1, ge=1, le=64)  # images per tagger call
    llm: LlmEndpointConfig = Field(default_factory=LlmEndpointConfig)  # tagger: openai
    vlm: LlmEndpointConfig = Field(default_factory=LlmEndpointConfig)  # caption source: vlm
    vlm_prompt: str = Field(
        "Write one caption for this image as a careful person would for training an image "
        "generator: what is visible, its style and medium. One sentence, no speculation.", min_length=1)
    # Data rights: applied before anything is labelled. Families (CC-BY matches CC-BY-4.0) or
    # exact ids (CC-BY-2.0); spelled as the crawl records them (see spiders.sources.licences).
    allowed_licenses: list[str] = Field(default_factory=lambda: ["public-domain", "CC0", "CC-BY", "CC-BY-SA"])
    allow_unknown_license: bool = False
    # Review: an edited copy of label/captions.csv; its captions win (source "human").
    review_file: str | None = None
    # Feedback samples (written by the retrain flow): served images with a user's corrected
    # caption, added to the training folder with caption source "feedback".
    feedback_dir: str | None = None
    report_thumbnail_px: int = Field(160, ge=32, le=1024)

    @field_validator("template")
    @classmethod
    def _one_trigger_one_caption(cls, v: str) -> str:
        if v.count("[trigger]") != 1 or v.count("[caption]") != 1:
            raise ValueError("must hold [trigger] and [caption] exactly once each, e.g. '[trigger], [caption]'")
        return v

    @model_validator(mode="after")
    def _endpoints_have_models(self) -> LabelConfig:
        if self.tagger == "openai" and not self.llm.model:
            raise ValueError("label.tagger is 'openai' but label.llm.model is empty: name the model to call")
        if "vlm" in self.caption_sources and not self.vlm.model:
            raise ValueError("label.caption_sources has 'vlm' but label.vlm.model is empty: name the model to call")
        return self


class TuneConfig(Section):
    """How the tuner (``training.tuner``) picks the training config; see the README's Tuner section.

    ``auto`` derives every training value from the dataset statistics, the model family, the GPU
    budget and past runs; ``profile`` keeps the profile's ``train`` section as it is (only a batch
    larger than the dataset is lowered). ``pin`` lists ``train`` keys the tuner must keep as set:
    every ``--set train.KEY=...`` (or ``LORA_FACTORY_TRAIN__KEY``) is added to it when the config
    is loaded, and a profile may list its own.
    """

    strategy: Literal["auto", "profile"] = "auto"
    gpu_gb: float | None = Field(None, gt=0)  # GPU memory budget in GiB; None: not bounded
    time_budget_h: float | None = Field(None, gt=0)  # wall-clock budget of the train stage
    seconds_per_step: float | None = Field(None, gt=0)  # measured s/step at the family's resolution, batch 1
    task_type: Literal["subject", "style", "concept"] | None = None  # None: from the labels or the domain
    history: bool = True  # learn from past runs in the tracking store
    history_neighbours: int = Field(5, ge=1, le=50)  # similar past runs that may shift a value
    pin: list[str] = Field(default_factory=list)  # train keys kept as set
    # Apply the suggestion the concept's last deploy left when it rejected its candidate
    # (factors on max_steps, rank, learning_rate; training.tuner.suggestion).
    apply_suggestion: bool = True

    @field_validator("pin")
    @classmethod
    def _pins_are_train_keys(cls, v: list[str]) -> list[str]:
        unknown = [k for k in v if k not in TrainConfig.model_fields]
        if unknown:
            raise ValueError(f"{unknown} are not train keys (e.g. rank, learning_rate, max_steps)")
        return sorted(set(v))


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
    optimizer: Literal["adamw", "adamw8bit", "prodigy"] = "adamw"  # prodigy: set learning_rate ~1.0
    max_grad_norm: float = Field(1.0, gt=0)
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    # The denoiser's LoRA targets; None: the family's (UNet: to_q/k/v/out.0; Flux: attention + MLP).
    target_modules: list[str] | None = None
    device: Literal["auto", "cpu", "cuda"] = "auto"
    log_every: int = Field(1, ge=1)
    # Data-parallel processes (one per GPU; CPU processes work too). >1: the train task starts
    # them with torchrun; `accelerate launch --multi_gpu -m training.launch` works the same way.
    num_processes: int = Field(1, ge=1)
    # Start from these LoRA weights (a diffusers pytorch_lora_weights.safetensors, e.g. the
    # champion's: retrain.from_champion) instead of a fresh zero adapter; its rank must be train.rank.
    init_lora: str = ""
    gradient_checkpointing: bool = False  # recompute activations in backward: less memory, ~30% slower
    # The frozen denoiser loaded quantised by bitsandbytes (QLoRA-style: the LoRA still trains in
    # fp32 and is saved unquantised): nf4 (4-bit NormalFloat; bf16 compute on a GPU, fp32 on the
    # CPU, where training/quantize.py swaps the layers in place) or int8.
    base_quantization: Literal["none", "nf4", "int8"] = "none"
    # Data: aspect-ratio buckets (never upscaled; a batch never mixes buckets) and augmentation.
    aspect_buckets: bool = True  # false: centre squares of `resolution` (small images upscaled)
    bucket_step: int | None = Field(None, ge=8)  # None: the model's latent grid (64 px for SD1.5)
    min_bucket_side: int | None = Field(None, ge=8)  # None: bucket_step
    max_bucket_side: int | None = Field(None, ge=8)  # None: 2 x resolution
    repeats: int = Field(1, ge=1)  # times each image appears per epoch
    random_flip: bool = False  # mirror half the samples (off: text, logos and asymmetric subjects)
    caption_dropout: float = Field(0.0, ge=0, lt=1)  # share of samples trained on the empty caption
    shuffle_tags: bool = False  # shuffle the comma-separated tags after the first keep_tokens
    keep_tokens: int = Field(1, ge=0)  # leading tags kept in place (the trigger word comes first)
    # Frozen encoders' outputs, cached on disk by content and reused across runs.
    cache_latents: bool = True
    cache_text_embeddings: bool = True  # unused while the text encoder trains or tags shuffle
    # Text-encoder LoRA (same rank and alpha as the UNet's).
    train_text_encoder: bool = False
    text_encoder_lr: float | None = Field(None, gt=0)  # None: learning_rate
    text_encoder_target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "out_proj"])
    # Prior preservation (DreamBooth): class images made by the base model, trained alongside.
    prior_preservation: bool = False
    class_prompt: str | None = None  # e.g. "a photo of a lighthouse"; required with prior_preservation
    num_class_images: int = Field(100, ge=1)
    prior_loss_weight: float = Field(1.0, gt=0)
    class_inference_steps: int = Field(25, ge=1)
    # Loss.
    noise_offset: float = Field(0.0, ge=0)  # 0.05-0.1 helps very dark / bright images
    snr_gamma: float | None = Field(None, gt=0)  # min-SNR-gamma weighting; 5.0 is the paper's value
    # Checkpoints and resume (the train task keeps them in the stage's scratch folder).
    checkpoint_every: int = Field(0, ge=0)  # 0: only when the run stops early (SIGTERM, guard, stop)
    keep_checkpoints: int = Field(2, ge=1)  # the last K, plus the best
    resume: bool = True  # continue from the latest checkpoint when one exists
    force_resume: bool = False  # resume even if the dataset or the config changed
    # Monitoring and guards.
    loss_smoothing: float = Field(0.9, ge=0, lt=1)  # EMA factor of the smoothed loss
    nan_max_consecutive: int = Field(3, ge=1)  # non-finite steps in a row before the run stops
    nan_lr_factor: float = Field(0.5, gt=0, le=1)  # LR multiplier after a skipped step
    validation_split: float = Field(0.0, ge=0, lt=1)  # held-out fraction (0: no validation)
    validation_every: int = Field(0, ge=0)  # steps between validations (0: checkpoint_every or end)
    early_stopping_window: int = Field(0, ge=0)  # validations of rising val loss; 0: off
    plateau_patience: int = Field(0, ge=0)  # steps without a better smoothed loss; 0: off
    plateau_factor: float = Field(0.5, gt=0, lt=1)
    sample_every: int = Field(0, ge=0)  # steps between sample grids (0: off)
    sample_prompts: list[str] = Field(default_factory=list)  # empty: the first training captions
    sample_seed: int = 1234
    sample_steps: int = Field(20, ge=1)
    # Export.
    export_kohya: bool = True

    @model_validator(mode="after")
    def _prior_needs_a_class_prompt(self) -> TrainConfig:
        if self.prior_preservation and not (self.class_prompt or "").strip():
            raise ValueError("train.prior_preservation needs train.class_prompt (e.g. 'a photo of a dog')")
        return self


class DoctorConfig(Section):
    """The dataset doctor (``lora-factory inspect``) and the factory's dataset gate before training.

    With ``enabled`` the label stage inspects the folder it wrote (``label/doctor.json`` and
    ``doctor.html``) and the train stage stops, before any step, when a ``min_*``/``max_*`` below is
    set and missed. Off by default: existing runs pay nothing.
    """

    enabled: bool = False
    # Gate minimums; None: not checked. Scores are 0-10 (see datatools.scores).
    min_images: int | None = Field(None, ge=1)
    min_relevance: float | None = Field(None, ge=0, le=10)
    min_consistency: float | None = Field(None, ge=0, le=10)
    min_diversity: float | None = Field(None, ge=0, le=10)
    min_quality: float | None = Field(None, ge=0, le=10)
    max_errors: int | None = Field(None, ge=0)  # findings of severity error
    # Checks
    max_aspect: float = Field(2.5, ge=1.0)  # long/short side above this: extreme_aspect
    min_pixel_share: float = Field(0.5, gt=0, le=1)  # pixels below this share of resolution²: below_resolution
    max_tokens: int | None = Field(None, ge=1)  # caption budget; None: label.max_tokens or CLIP's 75
    near_dup_max_phash: int = Field(8, ge=0, le=64)  # pHash and dHash Hamming bits: near_duplicate
    near_dup_max_dhash: int = Field(10, ge=0, le=64)
    outlier_z: float = Field(3.5, gt=0)  # robust z of the distance to the nearest images: outlier
    outlier_min_gap: float = Field(0.1, ge=0)  # ... and at least this much cosine distance past the median
    dominant_cluster_share: float = Field(0.75, gt=0, le=1)  # one cluster above this share: low variety
    # CLIP image-text cosine mapped to relevance 0..10 (ViT-B/32: ~0.15 unrelated, ~0.32 on target)
    relevance_cosine: tuple[float, float] = (0.15, 0.32)
    thumbnails: int = Field(12, ge=0)  # per finding in the dashboard
    # A short paragraph summarising the findings, written by the label stage's LLM endpoint
    # (label.llm); unreachable: the report is written without it, with one warning.
    narrative: bool = False


class EvaluateConfig(Section):
    # Templates: {trigger} and {topic} are filled in per topic.
    prompts: list[str] = Field(
        default_factory=lambda: ["a photo of {topic}, {trigger}", "{trigger}, {topic} in the evening"]
    )
    num_inference_steps: int = Field(25, ge=1)
    guidance_scale: float = Field(7.5, ge=0)
    resolution: int | None = Field(None, ge=8)  # None: the training resolution
    seed: int = 1234  # seed j of every prompt is seed + j, for base and LoRA alike
    num_seeds: int = Field(2, ge=1)  # images per prompt (and per side)
    batch_size: int = Field(4, ge=1)  # images per pipeline call
    # Prompt sets besides ``prompts`` (the concept templates); {trigger}, {topic}, {concept} filled in.
    generalisation_prompts: list[str] = Field(default_factory=lambda: [
        "{trigger}, {concept} as a watercolour painting", "{trigger}, {concept} on a beach at noon"])
    leakage_prompts: list[str] = Field(default_factory=lambda: ["a photo of {topic}"])  # no trigger
    max_heldout_captions: int = Field(2, ge=0)  # validation-split captions rendered as prompts
    # Image embeddings by registered name (tasks/evaluate/embedders.py: clip, dino, pixels); the first
    # of ``embeddings`` measures fidelity, copying, diversity and leakage; clip also gives CLIP-T;
    # dino (models.dino_scorer) is DreamBooth's subject fidelity. Each one's gain: eval.json fidelity_gains.
    embeddings: list[str] = Field(default_factory=lambda: ["clip", "dino", "pixels"], min_length=1)
    near_copy_threshold: float = Field(0.95, gt=0, le=1)  # cosine to a training image: near copy
    exact_copy_threshold: float = Field(0.999, gt=0, le=1)  # cosine: a copy (an error finding)
    min_weight_delta_rms: float = Field(1e-7, ge=0)  # below: the LoRA does nothing (an error)
    # Efficiency (tasks/evaluate/efficiency.py): seconds per image p50/p95/p99 and peak memory
    # without the LoRA, loaded and fused; images rendered one at a time per mode (0: not measured)
    # from the first ``efficiency_prompts`` prompts.
    efficiency_images: int = Field(4, ge=0)
    efficiency_prompts: int = Field(2, ge=1)
    # Best checkpoint (tasks/evaluate/best.py): score the last K checkpoints the trainer kept (train
    # publishes them in train/last_checkpoints; train.checkpoint_every must be set) and the final LoRA on
    # the concept prompts with the first embedding; the best becomes the run's LoRA (evaluate/lora,
    # what deploy ships). 0: off, the final LoRA is the run's.
    best_of_last: int = Field(0, ge=0)
    best_of_prompts: int = Field(2, ge=1)  # the short prompt set: the first N concept prompts
    # A LAION-style aesthetic head on the CLIP image embeddings (tasks/evaluate/aesthetic.py): a
    # .pth/.safetensors file of linear layers, or tiny:aesthetic (seeded random); empty: off. A
    # reference score (aesthetic_delta), in the gate only through min_scores/max_scores.
    aesthetic_head: str = ""
    # The CLIP the head was trained on, a reference like models.clip_scorer (an open_clip model in
    # the hub layout, or its local folder): the head scores that model's image embeddings, whatever
    # models.clip_scorer is (LAION's heads: OpenAI's ViT-L/14, 768-d; the profiles' scorer is
    # ViT-B/32, 512-d). Empty: models.clip_scorer (the clip embedding).
    aesthetic_clip: str = ""
    # Pass/fail per score (lora_factory.schemas.SCORE_KEYS): a score must be >= its min and <= its
    # max; the gate promotes only a LoRA that passes every one. A score that was not measured fails.
    min_scores: dict[str, float] = Field(default_factory=lambda: {"adherence_delta": 0.0})
    max_scores: dict[str, float] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _known_scores(self) -> EvaluateConfig:
        from .schemas import SCORE_KEYS

        unknown = sorted((set(self.min_scores) | set(self.max_scores)) - set(SCORE_KEYS))
        if unknown:
            raise ValueError(f"unknown scores {unknown} in min_scores/max_scores (known: {', '.join(SCORE_KEYS)})")
        return self


class GateConfig(Section):
    """The promotion gate's thresholds (``deploy/gate.py``); None: not checked. Scores are the
    evaluation's (``lora_factory.schemas.SCORE_KEYS``); failed thresholds of ``evaluate.min_scores``
    / ``max_scores`` and error findings (black images, zero LoRA, ...) block promotion too."""

    min_overall_score: float | None = None
    min_fidelity_gain: float | None = 0.0  # the LoRA must look at least as much like its data as the base
    max_adherence_drop: float | None = 0.02  # adherence_delta >= -this: prompt adherence no worse than base
    min_diversity: float | None = None  # a floor against mode collapse
    max_copy_risk: float | None = 0.2  # share of near-copies of training images
    require_portability: bool = True  # the exported files load alike (diffusers, kohya)
    # A threshold whose score the evaluation did not measure: "fail" blocks, "skip" ignores it
    # (and the decision says so).
    on_missing: Literal["fail", "skip"] = "fail"


class ExportConfig(Section):
    """Where a promoted LoRA is copied (``deploy/export.py``)."""

    store: bool = True  # <store>/loras/<concept>/v<version>/: both weight files, card, decision
    loras_dir: str = ""  # a ComfyUI / A1111 models/loras folder; empty: none
    # A production variant, saved beside the store copy: fp16 weights, or the base with the LoRA fused in.
    variant: Literal["none", "fp16", "fused"] = "none"
    # Hugging Face Hub model repo (user/name) the LoRA files and card are pushed to; empty: no push.
    # The write token comes from the environment variable named here (never from config).
    hub_repo: str = ""
    hub_private: bool = True
    hub_token_env: str = Field("HF_TOKEN", min_length=1)


class RefineConfig(Section):
    """The bounded auto-refine loop (``deploy/refine.py``): a rejected candidate starts another
    run with the gate's suggestion applied, each attempt its own run linked to the first."""

    attempts: int = Field(0, ge=0, le=10)  # extra runs after a rejection; 0: off
    max_images_cap: int = Field(5000, ge=1)  # more_data never raises crawl.max_images past this
    # Set by the loop on the runs it starts (MLflow tags lora_factory.refine_of / refine_attempt):
    of: str = ""  # the first run's id
    attempt: int = Field(0, ge=0)  # this run's attempt number (0: the first run)


class DeployConfig(Section):
    # The registered model (one per concept): models:/<concept>@champion. Empty: from the topics.
    concept: str = ""
    candidate_alias: str = "candidate"
    champion_alias: str = "champion"
    previous_alias: str = "previous"
    gate: GateConfig = Field(default_factory=GateConfig)
    # "required": a candidate that passes the gate waits for a person (`lora-factory approve RUN`
    # or the Prefect UI) before it becomes champion; after approval_timeout_s, on_timeout decides.
    approval: Literal["required", "none"] = "none"
    approval_timeout_s: int = Field(86400, ge=1)
    on_timeout: Literal["reject", "approve", "wait"] = "reject"  # wait: no timeout
    export: ExportConfig = Field(default_factory=ExportConfig)
    refine: RefineConfig = Field(default_factory=RefineConfig)


class StoreConfig(Section):
    # A local folder or s3://bucket/prefix. Empty: <home>.
    root: str = ""
    s3_endpoint_url: str | None = None  # for S3-compatible servers (MinIO, moto)


class TrackingConfig(Section):
    uri: str = ""  # empty: sqlite:///<home>/mlflow.db
    experiment: str = Field("lora-factory", min_length=1)


class ServerConfig(Section):
    """``lora-factory server``: persistent Prefect and MLflow servers on this machine, a process
    work pool with a worker, and the deployments of prefect.yaml. MLflow serves ``tracking.uri``
    (SQLite in the home by default, or a postgresql:// URL)."""

    host: str = "127.0.0.1"  # loopback unless told otherwise: the servers have no authentication
    prefect_port: int = Field(4200, ge=0, le=65535)  # 0: a free port
    mlflow_port: int = Field(5000, ge=0, le=65535)
    # Prefect's database; None: SQLite under <home>/prefect. E.g. postgresql+asyncpg://user@host/db
    prefect_database_url: str | None = None
    work_pool: str = Field("lora-factory", min_length=1)
    start_timeout_s: float = Field(180.0, gt=0)


class RuntimeConfig(Section):
    """Where the per-item batches of curate (decode, hash, embed), label (captions, re-ranking
    embeddings) and evaluate run: ``local`` in the stage's process, ``dask`` on a Dask cluster
    (prefect-dask). Outputs are identical either way, so no stage's cache key reads this."""

    executor: Literal["local", "dask"] = "local"
    # tcp://host:8786: an existing Dask scheduler. None: a local cluster of dask_workers processes.
    dask_address: str | None = None
    dask_workers: int = Field(2, ge=1)
    dask_threads_per_worker: int = Field(1, ge=1)
    batch_items: int = Field(64, ge=1)  # images per mapped batch (rounded to the model's batch size)
    # torch's threads in each worker; None: the flow process's torch.get_num_threads() (Dask's
    # nanny would leave 1), so float results (embeddings) are bit-identical to the in-process run.
    dask_torch_threads: int | None = Field(None, ge=1)


class ServeConfig(Section):
    """``lora-factory serve``: the HTTP service of each concept's ``champion`` LoRA and the
    feedback store. The bearer token of the feedback and admin routes is read from the environment
    variable named by ``token_env`` (never from a file, never logged)."""

    host: str = "127.0.0.1"  # loopback unless told otherwise
    port: int = Field(8000, ge=0, le=65535)  # 0: a free port
    feedback_url: str = ""  # SQLAlchemy URL; empty: sqlite:///<home>/feedback.db
    token_env: str = Field("LORA_FACTORY_SERVE_TOKEN", min_length=1)
    max_body_bytes: int = Field(16_384, ge=256)
    rate_per_s: float = Field(20.0, ge=0)  # per client address; 0: no limit
    rate_burst: int = Field(40, ge=1)
    max_steps: int = Field(50, ge=1)
    max_prompt_chars: int = Field(500, ge=1)
    generate_queue: int = Field(4, ge=0)  # /generate requests waiting behind the running one; more: 429
    # output safety filter (models.safety_checker) on every generated image; a block answers 451
    safety_filter: bool = False
    safety_adjustment: float = Field(0.0, ge=-2, le=2)  # added to each concept score: > 0 stricter
    alias_refresh_s: float = Field(5.0, ge=0)  # how often a concept's champion alias is re-read
    device: str = "cpu"
    # retrain triggers: a low rolling mean rating, or enough new rated / corrected samples
    low_rating_threshold: float = Field(2.5, ge=1, le=5)
    low_rating_min_count: int = Field(10, ge=1)
    rating_window: int = Field(50, ge=1)
    new_data_count: int = Field(50, ge=1)
    emit_events: bool = True
    keep_images: bool = True  # store each served PNG, so a corrected caption can become a training sample


class RetrainConfig(Section):
    """The ``retrain`` flow (``flows/retrain.py``): what a concept's run takes from its feedback."""

    sample_min_rating: int = Field(4, ge=1, le=5)  # corrected caption + at least this rating: a training sample
    low_rating: int = Field(2, ge=1, le=5)  # prompts rated at or below this join the evaluation prompts
    max_eval_prompts: int = Field(8, ge=0)  # at most this many of them (the newest)
    max_samples: int = Field(500, ge=0)  # at most this many feedback samples (the newest)
    from_champion: bool = False  # start training from the champion's LoRA weights (train.init_lora)


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
    doctor: DoctorConfig = Field(default_factory=DoctorConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    deploy: DeployConfig = Field(default_factory=DeployConfig)
    store: StoreConfig = Field(default_factory=StoreConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    server: ServerConfig = Field(default_factory=ServerConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig)
    retrain: RetrainConfig = Field(default_factory=RetrainConfig)
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)

    @field_validator("profile")
    @classmethod
    def _profile_name(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be empty")
        return v

    @model_validator(mode="after")
    def _narrative_has_a_model(self) -> FactoryConfig:
        if self.doctor.narrative and not self.label.llm.model:
            raise ValueError("doctor.narrative is on but label.llm.model is empty: name the model the narrative asks "
                             "(label.llm.base_url and label.llm.model)")
        return self
