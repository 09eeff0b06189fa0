"""The stage catalog: every stage output named once, and what each stage reads and writes.

Why: stages hand each other files in the run directory. When each side spelled the file name
and schema for itself, the contracts were implicit, stages imported each other for schemas, and
a stage's real inputs showed only inside its body. Here each output has one entry (its path in
the stage's folder, its format with schema, its reader and writer), each stage declares the
outputs it reads and writes, and the stage order is derived from those declarations.
``run_stage`` (``lora_factory.context``) enforces them: a stage starts only when its inputs
exist, reads and writes only what it declared, and fails if it did not write a declared output.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .catalog_formats import Csv, Embeddings, Folder, Format, Json, Png, Table, Text, Toml, Yaml
from .config import TrainConfig
from .external_inputs import EXTERNAL, REGISTRY_CHAMPION
from .schemas import (
    DATASET_SCHEMA,
    DECISION_SCHEMA,
    ITEM_SCHEMA,
    LABELS_SCHEMA,
    PAGE_SCHEMA,
    REJECTED_SCHEMA,
    REVIEW_COLUMNS,
    CaptionStats,
    CurateStats,
    DoctorReport,
    EvalResult,
)


@dataclass(frozen=True)
class Output:
    """One thing a stage writes: ``<run>/<stage>/<path>``."""

    stage: str
    name: str
    path: str  # relative to the stage's folder; a folder when the format is Folder/Embeddings
    format: Format
    doc: str
    required: bool = True  # False: written only with some settings (e.g. sample grids)

    @property
    def key(self) -> str:
        return f"{self.stage}.{self.name}"

    @property
    def run_path(self) -> str:
        """The path inside the run directory, as users see it: ``curate/dataset.parquet``."""
        return f"{self.stage}/{self.path}"

    def at(self, stage_dir: Path) -> Path:
        return Path(stage_dir) / self.path

    def exists(self, stage_dir: Path) -> bool:
        return self.format.exists(self.at(stage_dir))

    def read(self, stage_dir: Path) -> Any:
        return self.format.read(self.at(stage_dir))

    def write(self, stage_dir: Path, data: Any) -> Path:
        path = self.at(stage_dir)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.format.write(path, data)
        return path


@dataclass(frozen=True)
class StageSpec:
    """A stage's contract: the outputs it reads (of earlier stages) and the ones it writes."""

    name: str
    doc: str
    reads: tuple[Output, ...] = ()
    writes: tuple[Output, ...] = field(default_factory=tuple)
    # What else its results depend on (``stage_keys``): the config sections or dotted settings it
    # reads, and the modules whose source is its code.
    settings: tuple[str, ...] = ()
    code: tuple[str, ...] = ()
    # Inputs outside the run directory (``lora_factory.external_inputs``), e.g. the registry's
    # champion the gate compares with: fingerprinted into the key as the stage left them.
    external: tuple[str, ...] = ()

    def upstream(self) -> list[str]:
        """The stages whose outputs this one reads, in first-read order."""
        return list(dict.fromkeys(o.stage for o in self.reads))


def _out(stage: str, name: str, path: str, fmt: Format, doc: str, required: bool = True) -> Output:
    return Output(stage, name, path, fmt, doc, required)


# crawl ----------------------------------------------------------------------------------------
CRAWL_ITEMS = _out("crawl", "items", "items.parquet", Table(ITEM_SCHEMA), "every image kept by the crawl, with its provenance")
CRAWL_IMAGES = _out("crawl", "images", "images", Folder(), "the images, named <sha256>.<ext>; items' image_path is relative to crawl/")
CRAWL_PAGES = _out("crawl", "pages", "pages.parquet", Table(PAGE_SCHEMA), "every page requested and what became of it")
CRAWL_REJECTED = _out("crawl", "rejected", "rejected.parquet", Table(REJECTED_SCHEMA), "image URLs not kept, with the reason")
CRAWL_STATS = _out("crawl", "stats", "crawl_stats.json", Json(), "counts, bytes, rejection reasons, finish reason")
CRAWL_CONFIG = _out("crawl", "config", "crawl_config.json", Json(), "the crawl settings that ran (secrets redacted)")
# curate ---------------------------------------------------------------------------------------
CURATE_DATASET = _out("curate", "dataset", "dataset.parquet", Table(DATASET_SCHEMA), "the kept items with every score")
CURATE_DECISIONS = _out("curate", "decisions", "decisions.parquet", Table(DECISION_SCHEMA), "keep/drop per item with reason, score, dup_of")
CURATE_REJECTED = _out("curate", "rejected", "rejected.parquet", Table(DECISION_SCHEMA), "the dropped items' decisions")
CURATE_EMBEDDINGS = _out("curate", "embeddings", "embeddings", Embeddings(), "text and CLIP embeddings of the items, with the models that made them")
CURATE_STATS = _out("curate", "stats", "stats.json", Json(CurateStats), "dataset statistics for the tuner (size, diversity, captions, aspect, domain)")
CURATE_REPORT = _out("curate", "report", "report.html", Text(), "counts, histograms, thumbnails per reason, duplicate groups")
# label ----------------------------------------------------------------------------------------
LABEL_DATASET = _out("label", "dataset", "dataset", Folder(), "images with .txt captions and metadata.jsonl: trains here, in sd-scripts and in diffusers")
LABEL_KOHYA_TOML = _out("label", "kohya_toml", "dataset/kohya_dataset.toml", Toml(), "sd-scripts --dataset_config for the folder (repeats, buckets, caption extension)")
LABEL_LABELS = _out("label", "labels", "labels.parquet", Table(LABELS_SCHEMA), "caption per item, its source, the candidates and their CLIP scores, tags, licence")
LABEL_CAPTION_STATS = _out("label", "caption_stats", "caption_stats.json", Json(CaptionStats), "caption coverage, lengths, sources, tag frequency, concept summary, for the tuner, evaluate and the model card")
LABEL_DECISIONS = _out("label", "decisions", "decisions.parquet", Table(DECISION_SCHEMA), "keep/drop per item (license, no caption, human review)")
LABEL_CAPTIONS = _out("label", "captions", "captions.csv", Csv(REVIEW_COLUMNS), "one row per image to review: edit 'caption' (or set keep to no) and pass the file back as label.review_file")
LABEL_REPORT = _out("label", "report", "report.html", Text(), "every kept image with caption, candidates and scores, tags, licence, source; tag frequency")
LABEL_DOCTOR = _out("label", "doctor", "doctor.json", Json(DoctorReport), "the dataset doctor's report on the training folder (doctor.enabled): findings, scores; train's gate reads it", required=False)
LABEL_DOCTOR_REPORT = _out("label", "doctor_report", "doctor.html", Text(), "the doctor's dashboard: score radar, findings with thumbnails and fixes, embedding map, word bars", required=False)
LABEL_DATASHEET = _out("label", "datasheet", "datasheet.md", Text(), "sources, licence counts, opt-outs honoured, authors to attribute: feeds the model card")
# tune -----------------------------------------------------------------------------------------
TUNE_TRAIN_CONFIG = _out("tune", "train_config", "train_config.yaml", Yaml(TrainConfig), "the training config chosen for this dataset")
TUNE_RATIONALE = _out("tune", "rationale", "rationale.md", Text(), "why each value was chosen")
# train ----------------------------------------------------------------------------------------
TRAIN_LORA = _out("train", "lora", "lora", Folder(), "the adapter: diffusers and kohya safetensors, model card, training args")
TRAIN_SAMPLES = _out("train", "samples", "samples", Folder(), "sample grids during training", required=False)
TRAIN_CHECKPOINTS = _out("train", "checkpoints", "last_checkpoints", Folder(),
                         "the last evaluate.best_of_last checkpoints' weights (step-NNNNNN/lora.safetensors): "
                         "evaluate chooses the best among them and the final LoRA", required=False)
# evaluate -------------------------------------------------------------------------------------
EVAL_RESULT = _out("evaluate", "result", "eval.json", Json(EvalResult), "every metric and score, base vs LoRA, thresholds, findings, verdict")
EVAL_GRID = _out("evaluate", "grid", "grid.png", Png(), "prompts x seeds x (base | LoRA)")
EVAL_REPORT = _out("evaluate", "report", "report.html", Text(), "grid, metric table with thresholds, findings, worst copies")
EVAL_MODEL_CARD = _out("evaluate", "model_card", "README.md", Text(), "the LoRA's model card with the evaluation's scores")
EVAL_IMAGES = _out("evaluate", "images", "images", Folder(), "every generated image")
EVAL_LORA = _out("evaluate", "lora", "lora", Folder(), "the chosen checkpoint as the run's LoRA (train/lora's folder "
                 "with both weight files replaced), when evaluate.best_of_last chose one before the final: deploy "
                 "ships it", required=False)
# deploy ---------------------------------------------------------------------------------------
DEPLOY_DECISION = _out("deploy", "decision", "decision.json", Json(), "concept, registered version, aliases, verdict, the gate's checks and reasons, the champion before and after (champion, champion_after)")
DEPLOY_REPORT = _out("deploy", "report", "report.html", Text(), "the evaluation report with the gate's decision and registered version")

SPECS: tuple[StageSpec, ...] = (
    StageSpec("crawl", "topics -> candidate images with provenance (Scrapy)",
              reads=(), writes=(CRAWL_ITEMS, CRAWL_IMAGES, CRAWL_PAGES, CRAWL_REJECTED, CRAWL_STATS, CRAWL_CONFIG),
              settings=("crawl",), code=("tasks.crawl", "spiders")),
    StageSpec("curate", "quality, text, alignment filters and dedup, a reason per drop",
              reads=(CRAWL_ITEMS, CRAWL_IMAGES),
              writes=(CURATE_DATASET, CURATE_DECISIONS, CURATE_REJECTED, CURATE_EMBEDDINGS, CURATE_STATS, CURATE_REPORT),
              settings=("curate", "models.text_embedder", "models.clip_scorer", "seed"), code=("tasks.curate", "datatools")),
    StageSpec("label", "licence policy, captions chosen by CLIP among candidates, tags, the training folder",
              reads=(CURATE_DATASET, CRAWL_IMAGES, CRAWL_STATS),
              writes=(LABEL_DATASET, LABEL_KOHYA_TOML, LABEL_LABELS, LABEL_CAPTION_STATS, LABEL_DECISIONS,
                      LABEL_CAPTIONS, LABEL_REPORT, LABEL_DATASHEET, LABEL_DOCTOR, LABEL_DOCTOR_REPORT),
              settings=("label", "doctor", "models.captioner", "models.tagger", "models.clip_scorer", "seed"),
              code=("tasks.label", "datatools")),
    StageSpec("tune", "the training config for this dataset, explained",
              reads=(CURATE_STATS, LABEL_CAPTION_STATS), writes=(TUNE_TRAIN_CONFIG, TUNE_RATIONALE),
              settings=("tune", "train", "models.base", "models.base_family"), code=("tasks.tune", "training.tuner")),
    StageSpec("train", "the LoRA (diffusers + PEFT)",
              reads=(LABEL_DATASET, LABEL_CAPTION_STATS, TUNE_TRAIN_CONFIG, LABEL_DOCTOR),
              writes=(TRAIN_LORA, TRAIN_SAMPLES, TRAIN_CHECKPOINTS),
              settings=("train", "doctor", "models.base", "models.base_family", "seed", "evaluate.best_of_last"), code=("tasks.train", "training")),
    StageSpec("evaluate", "base vs LoRA on the same seeds",
              reads=(TRAIN_LORA, TUNE_TRAIN_CONFIG, LABEL_DATASET, LABEL_CAPTION_STATS, TRAIN_SAMPLES,
                     TRAIN_CHECKPOINTS),
              writes=(EVAL_RESULT, EVAL_GRID, EVAL_REPORT, EVAL_IMAGES, EVAL_MODEL_CARD, EVAL_LORA),
              settings=("evaluate", "models.base", "models.base_family", "models.clip_scorer", "models.dino_scorer",
                        "seed"),
              code=("tasks.evaluate",)),
    StageSpec("deploy", "apply the gate, register the LoRA (mlflow.diffusers), move aliases",
              reads=(EVAL_RESULT, EVAL_REPORT, EVAL_MODEL_CARD, TRAIN_LORA, EVAL_LORA, LABEL_LABELS),
              writes=(DEPLOY_DECISION, DEPLOY_REPORT),
              settings=("deploy", "models.base"), code=("tasks.deploy", "deploy"), external=(REGISTRY_CHAMPION,)),
)


class CatalogError(RuntimeError):
    """The declarations contradict each other (a bug in this module, caught at import)."""


def _topological(specs: Iterable[StageSpec]) -> tuple[str, ...]:
    """Stage names with every producer before its readers; ties keep declaration order."""
    specs = list(specs)
    producer = {o.key: s.name for s in specs for o in s.writes}
    needs = {s.name: {producer[o.key] for o in s.reads} - {s.name} for s in specs}
    order: list[str] = []
    while len(order) < len(specs):
        ready = [s.name for s in specs if s.name not in order and needs[s.name] <= set(order)]
        if not ready:
            raise CatalogError(f"stage declarations form a cycle among {sorted(set(needs) - set(order))}")
        order.append(ready[0])
    return tuple(order)


def _validate(specs: tuple[StageSpec, ...]) -> None:
    written: dict[str, str] = {}
    for spec in specs:
        for out in spec.writes:
            if out.stage != spec.name:
                raise CatalogError(f"stage {spec.name} declares {out.key}, which belongs to {out.stage}")
            if out.key in written:
                raise CatalogError(f"{out.key} is declared twice")
            written[out.key] = spec.name
    for spec in specs:
        unknown = set(spec.external) - set(EXTERNAL)
        if unknown:
            raise CatalogError(f"stage {spec.name} declares unknown external inputs {sorted(unknown)}")
        for out in spec.reads:
            if out.key not in written:
                raise CatalogError(f"stage {spec.name} reads {out.key}, which no stage writes")
            if written[out.key] == spec.name:
                raise CatalogError(f"stage {spec.name} reads its own output {out.key}")


_validate(SPECS)
STAGES: tuple[str, ...] = _topological(SPECS)
OUTPUTS: dict[str, Output] = {o.key: o for s in SPECS for o in s.writes}
_BY_NAME = {s.name: s for s in SPECS}


def spec(stage: str) -> StageSpec:
    try:
        return _BY_NAME[stage]
    except KeyError:
        raise KeyError(f"unknown stage '{stage}': the stages are {', '.join(STAGES)}") from None


def edges() -> list[tuple[str, str, Output]]:
    """(producer, consumer, output) for every declared read, in stage order."""
    return [(o.stage, name, o) for name in STAGES for o in spec(name).reads]


def downstream(stage: str) -> list[str]:
    """``stage`` and every stage that reads, directly or not, what it writes (in stage order)."""
    hit = {stage}
    for name in STAGES:
        if any(o.stage in hit for o in spec(name).reads):
            hit.add(name)
    return [s for s in STAGES if s in hit]


def decision_outputs() -> list[Output]:
    """Each stage's per-item keep/drop table (the manifest joins them)."""
    return [o for o in OUTPUTS.values() if o.name == "decisions"]
