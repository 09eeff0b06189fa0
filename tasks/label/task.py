"""The Prefect task: load the profile's models, run the stage, log counts, timings and reports."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from datatools.captions import tokenizer_budget
from lora_factory.catalog import (
    CRAWL_IMAGES,
    CURATE_DATASET,
    LABEL_CAPTION_STATS,
    LABEL_CAPTIONS,
    LABEL_DATASET,
    LABEL_DATASHEET,
    LABEL_KOHYA_TOML,
    LABEL_REPORT,
)
from lora_factory.config import FactoryConfig
from lora_factory.context import RunRef, Stage, run_stage
from lora_factory.home import home_of
from lora_factory.llm_client import ChatClient, ResponseCache
from lora_factory.scaleout import mapper_for
from lora_factory.secrets import redact

from .._prefect import stage_task
from .batches import LabelBatches
from .doctor import run_doctor
from .keywords import KeywordTagger
from .stage import STAGE, LabelModels, LabelResult, run_label
from .tagging import EndpointChat, LocalChat

RANDOM_ROLES = {"captioner": "its captions are gibberish", "clip_scorer": "its CLIP scores (and so the re-ranking) "
                "carry no meaning", "tagger": "its replies are gibberish, so the keyword fallback tags every image"}


def random_model_notes(cfg: FactoryConfig) -> list[str]:
    """One line per random ``tiny:`` model the stage uses, for the report and the log."""
    used = {"captioner": "captioner" in cfg.label.caption_sources, "clip_scorer": cfg.label.rerank,
            "tagger": cfg.label.tagger == "local"}
    return [f"models.{role} = {getattr(cfg.models, role)} is a random-weight tiny model: {why}."
            for role, why in RANDOM_ROLES.items() if used[role] and getattr(cfg.models, role).startswith("tiny:")]


def _tagger(cfg: FactoryConfig, cache: Path, llm_cache: ResponseCache) -> tuple[Any, str, int]:
    """(chat callable or None, tag source name, concurrency) for ``label.tagger``."""
    lc = cfg.label
    if lc.tagger == "openai":
        return EndpointChat(ChatClient(lc.llm, llm_cache, seed=cfg.seed)), "openai", lc.llm.max_concurrency
    if lc.tagger == "local":
        from lora_factory.models import load_tagger

        return LocalChat(load_tagger(cfg.models.tagger, cache), cfg.models.tagger, lc.llm.max_tokens, llm_cache), "local", 1
    return None, lc.tagger, 1


def load_models(cfg: FactoryConfig) -> LabelModels:
    """The captioner, CLIP scorer, base tokenizer and taggers the profile names (real loaders)."""
    from lora_factory.models import (
        load_captioner,
        load_clip_scorer,
        load_text_embedder,
        resolve_ref,
    )

    lc, home = cfg.label, home_of(cfg)
    cache, llm_cache = home.models, ResponseCache(home.llm_cache)
    chat, source, workers = _tagger(cfg, cache, llm_cache)
    keyword = None
    if lc.tagger == "keywords" or (lc.tag_fallback == "keywords" and lc.tagger != "none"):
        embedder = load_text_embedder(cfg.models.text_embedder, cache)
        keyword = KeywordTagger(lambda texts: embedder.encode(texts, batch_size=128, normalize_embeddings=True,
                                                              show_progress_bar=False))
    batches = _batches(cfg, cache)  # with it, the captioner is loaded on the workers only
    return LabelModels(
        captioner=load_captioner(cfg.models.captioner, cache) if "captioner" in lc.caption_sources and not batches
        else None,
        clip=load_clip_scorer(cfg.models.clip_scorer, cache) if lc.rerank else None,
        budget=tokenizer_budget(resolve_ref(cfg.models.base, "base", cache), lc.max_tokens),
        tag_chat=chat, tag_source=source, tag_workers=workers, keyword_tagger=keyword,
        vlm=ChatClient(lc.vlm, llm_cache, seed=cfg.seed) if "vlm" in lc.caption_sources else None,
        notes=random_model_notes(cfg), batches=batches)


def _batches(cfg: FactoryConfig, cache: Path) -> LabelBatches | None:
    mapper = mapper_for(cfg.runtime)
    if mapper is None:
        return None
    return LabelBatches(mapper, cfg.models.captioner, cfg.models.clip_scorer, cache, cfg.runtime.batch_items)


def metrics(result: LabelResult) -> dict[str, float]:
    drops: dict[str, int] = {}
    for d in result.dropped:
        drops[f"dropped_{d['reason']}"] = drops.get(f"dropped_{d['reason']}", 0) + 1
    stats = result.stats
    total = sum(result.timings.values()) or 1.0
    return {"labelled": len(result.labels), **drops,
            **{f"caption_from_{k}": v for k, v in stats.sources.items()},
            **{f"tagger_{k}": v for k, v in stats.tagger.items()},
            "hallucinations": stats.hallucinations, "human_captions": stats.human_captions,
            "over_token_budget": stats.over_token_budget, "tokens_max": stats.tokens_max or 0,
            **{f"seconds_{k}": round(v, 3) for k, v in result.timings.items()},
            "rerank_share": round(result.timings.get("rerank", 0.0) / total, 4)}


def _image_dir(st: Stage) -> str:
    """Where the dataset folder will be once the stage commits (for the kohya TOML)."""
    local = st.run.store.local_path(f"{st.run.key}/{STAGE}")
    return str(LABEL_DATASET.at(Path(local))) if local is not None else LABEL_DATASET.path


@stage_task(STAGE)
def label_task(ref: RunRef) -> dict[str, int]:
    with run_stage(ref, STAGE) as st:
        cfg = st.config
        st.log_params(redact(cfg.label.model_dump(mode="json")))
        models = load_models(cfg)
        for note in models.notes:
            st.log.warning("label: %s", note)
        try:
            result = run_label(st.input_dir(CURATE_DATASET), st.input_dir(CRAWL_IMAGES), st.out, cfg, models,
                               ref.topics, _image_dir(st))
        finally:
            for output in (LABEL_REPORT, LABEL_DATASHEET, LABEL_CAPTIONS, LABEL_CAPTION_STATS, LABEL_KOHYA_TOML):
                if output.exists(st.out):
                    st.log_artifact(output.at(st.out))
        st.log_metrics(metrics(result))
        if cfg.doctor.enabled:
            report = run_doctor(st, models.clip, models.budget, ref.topics)
            st.log.info("label: dataset doctor: %s; %d findings", ", ".join(
                f"{k} {s.value:.1f}" for k, s in report.scores.items()), len(report.findings))
        st.log.info("label: %d images labelled, %d dropped; summary: %s", len(result.labels), len(result.dropped),
                    result.stats.concept_summary)
    return {"labelled": len(result.labels), "dropped": len(result.dropped)}
