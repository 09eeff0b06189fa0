"""Curate: turn the crawl's candidate pool into a training set, with a reason for every drop.

One module per job: ``features`` (decode once: size, blur, exposure, hashes), ``text``
(cleaning, ads, language), ``quality``, ``alignment`` (CLIP and text-topic), ``dedup`` (pairs ->
representatives, exact / SemDeDup), ``image_dedup``, ``semantic``, ``balance``, ``clip_embed``
(pipelined CLIP image embeddings), ``stats``, ``report``; ``stage`` runs them in order and
``task`` is the Prefect wrapper.
"""

from .stage import (
    STAGE,
    CurateModels,
    CurateResult,
    curate_items,
    load_embeddings,
    run_curate,
    write_outputs,
)
from .task import curate_task

__all__ = [
    "STAGE",
    "CurateModels",
    "CurateResult",
    "curate_items",
    "curate_task",
    "load_embeddings",
    "run_curate",
    "write_outputs",
]
