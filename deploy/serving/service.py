"""Assemble the service from the factory's settings: store, adapter pool, metrics, limits."""

from __future__ import annotations

from pathlib import Path

from lora_factory.config import FactoryConfig
from lora_factory.home import home_of

from .adapters import AdapterPool
from .app import Service
from .champion import Champion, champion_version, resolve_champion
from .feedback_store import FeedbackStore, default_url
from .feedback_writer import FeedbackWriter
from .generate_queue import GenerateQueue
from .limits import RateLimiter
from .metrics import ServeMetrics
from .safety import SafetyFilter
from .triggers import Emitter, prefect_emitter, warm_up_prefect


def feedback_url(cfg: FactoryConfig) -> str:
    return cfg.serve.feedback_url or default_url(Path(cfg.home))


def make_pool(cfg: FactoryConfig) -> AdapterPool:
    home = home_of(cfg)
    uri, downloads = cfg.tracking.uri, home.work / "serve" / "loras"

    def resolve(concept: str) -> Champion:
        return resolve_champion(uri, concept, downloads)

    def version_of(concept: str) -> str:
        return champion_version(uri, concept)[0]

    return AdapterPool(resolve, version_of, home.models, device=cfg.serve.device,
                       refresh_s=cfg.serve.alias_refresh_s)


def make_service(cfg: FactoryConfig, token: str, emit: Emitter | None = None,
                 generate: bool = True) -> Service:
    """``generate=False``: a feedback-only service that never loads a model (bench, tests)."""
    if emit is None and cfg.serve.emit_events:
        warm_up_prefect()
    store = FeedbackStore(feedback_url(cfg))
    generating, metrics = GenerateQueue(cfg.serve.generate_queue), ServeMetrics()
    metrics.generate_queue.set_function(generating.held)
    return Service(cfg=cfg.serve, token=token, store=store, writer=FeedbackWriter(store, cfg.serve),
                   pool=make_pool(cfg) if generate else None, generating=generating,
                   emit=emit or prefect_emitter, metrics=metrics,
                   limiter=RateLimiter(cfg.serve.rate_per_s, cfg.serve.rate_burst),
                   safety=make_safety(cfg) if cfg.serve.safety_filter else None)


def make_safety(cfg: FactoryConfig) -> SafetyFilter:
    """Loaded at start, so a missing checker is one line before the server listens."""
    return SafetyFilter(cfg.models.safety_checker, home_of(cfg).models, cfg.serve.safety_adjustment)
