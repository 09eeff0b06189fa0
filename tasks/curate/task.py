"""The Prefect task: load the profile's models, run the stage, log counts, stats and report."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lora_factory.catalog import CRAWL_ITEMS, CURATE_REJECTED, CURATE_REPORT, CURATE_STATS
from lora_factory.config import ModelsConfig, RuntimeConfig
from lora_factory.context import RunRef, run_stage
from lora_factory.home import home_of
from lora_factory.scaleout import mapper_for

from .._prefect import stage_task
from .stage import STAGE, CurateModels, run_curate
from .stats import flat_metrics


def load_models(models_cfg: ModelsConfig, cache: Path, runtime: RuntimeConfig | None = None) -> CurateModels:
    """The text embedder and CLIP scorer named by the profile (loaded with the real loaders), and
    where the per-image batches run (``runtime.executor``)."""
    from lora_factory.models import load_clip_scorer, load_text_embedder

    embedder = load_text_embedder(models_cfg.text_embedder, cache)

    def encode(texts: list[str]) -> np.ndarray:
        return embedder.encode(texts, batch_size=128, normalize_embeddings=True, show_progress_bar=False)

    clip = load_clip_scorer(models_cfg.clip_scorer, cache)
    runtime = runtime or RuntimeConfig()
    return CurateModels(encode, models_cfg.text_embedder, clip, models_cfg.clip_scorer,
                        map_batches=mapper_for(runtime), cache_dir=cache, batch_items=runtime.batch_items)


@stage_task(STAGE)
def curate_task(ref: RunRef) -> dict[str, int]:
    with run_stage(ref, STAGE) as st:
        cfg = st.config
        st.log_params({k: str(v) for k, v in cfg.curate.model_dump().items()})
        models = load_models(cfg.models, home_of(cfg).models, cfg.runtime)
        try:
            result = run_curate(st.input_dir(CRAWL_ITEMS), cfg.curate, st.out, models, seed=cfg.seed)
        finally:
            for output in (CURATE_REPORT, CURATE_STATS):
                if output.exists(st.out):
                    st.log_artifact(output.at(st.out))
        for note in result.notes:
            st.log.info("curate: %s", note)
        st.log_metrics({**result.counts(), **{f"removed_by_{k.replace('/', '_')}": v for k, v in result.removed_by.items()}})
        st.log_metrics(flat_metrics(result.stats))
        st.log_artifact(st.output_path(CURATE_REJECTED))
    return result.counts()
