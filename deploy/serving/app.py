"""The HTTP service: ``POST /generate`` (a PNG from a concept's champion), ``POST /feedback``,
``GET /health``, ``GET /metrics`` and the admin routes. Feedback and admin routes need the bearer
token; ``/generate`` and ``/feedback`` are rate-limited per client; every body is size-capped.
"""

from __future__ import annotations

import asyncio
import io
import secrets
from dataclasses import dataclass
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from lora_factory.config import ServeConfig
from lora_factory.errors import FactoryError

from .adapters import AdapterPool, BaseMismatchError
from .champion import NoChampionError
from .feedback_store import FeedbackStore
from .feedback_writer import FeedbackRejected, FeedbackWriter, Rating
from .generate_queue import GenerateQueue
from .limits import BodyLimitMiddleware, RateLimiter
from .metrics import CONTENT_TYPE, MetricsMiddleware, ServeMetrics
from .safety import SafetyFilter
from .triggers import Emitter


class GenerateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prompt: str = Field(min_length=1)
    concept: str = Field(min_length=1, max_length=250)
    seed: int = Field(0, ge=0, le=2**63 - 1)
    steps: int = Field(20, ge=1)


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    generation_id: str | None = Field(None, min_length=1, max_length=32)
    run_id: str | None = Field(None, min_length=1, max_length=250)
    concept: str | None = Field(None, min_length=1, max_length=250)  # needed with run_id
    rating: int = Field(ge=1, le=5)
    comment: str | None = Field(None, max_length=2000)
    corrected_caption: str | None = Field(None, min_length=1, max_length=1000)

    @model_validator(mode="after")
    def _one_target(self) -> FeedbackRequest:
        if (self.generation_id is None) == (self.run_id is None):
            raise ValueError("give exactly one of generation_id or run_id")
        if self.run_id is not None and self.concept is None:
            raise ValueError("feedback on a run_id needs the concept")
        return self


@dataclass
class Service:
    """What the routes share: settings, the store and its writer thread, the adapter pool and the
    bounded queue in front of it, metrics, the trigger hook."""

    cfg: ServeConfig
    token: str
    store: FeedbackStore
    writer: FeedbackWriter
    pool: AdapterPool | None
    generating: GenerateQueue
    emit: Emitter
    metrics: ServeMetrics
    limiter: RateLimiter
    safety: SafetyFilter | None = None

    def close(self) -> None:
        self.writer.close()
        self.generating.close()
        self.store.close()


def _one_line(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return "; ".join(parts)


def _errors(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": _one_line(exc)}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": exc.detail}, status_code=exc.status_code, headers=exc.headers)


def build_app(svc: Service) -> FastAPI:
    app = FastAPI(title="LoRA Factory serving", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.service = svc
    _errors(app)

    # async: FastAPI runs a plain ``def`` dependency in its thread pool, a hop per request for
    # what takes microseconds
    async def authorized(request: Request) -> None:
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(given.encode(), svc.token.encode()):
            raise HTTPException(401, "missing or wrong bearer token", {"WWW-Authenticate": "Bearer"})

    async def limited(request: Request) -> None:
        wait = svc.limiter.retry_after(request.client.host if request.client else "?")
        if wait:
            raise HTTPException(429, f"rate limit of {svc.cfg.rate_per_s:g}/s per client exceeded",
                                {"Retry-After": str(wait)})

    auth, limit = Depends(authorized), Depends(limited)
    _routes(app, svc, auth, limit)
    app.add_middleware(BodyLimitMiddleware, max_bytes=svc.cfg.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=svc.metrics)
    return app


def _generate(svc: Service, req: GenerateRequest) -> Response:
    """Runs on the generation thread: CPU-bound, never on the event loop."""
    try:
        image = svc.pool.generate(req.concept, req.prompt, req.seed, req.steps)  # type: ignore[union-attr]
    except NoChampionError as e:
        raise HTTPException(404, str(e)) from e
    except BaseMismatchError as e:
        raise HTTPException(409, str(e)) from e
    except FactoryError as e:
        raise HTTPException(503, str(e)) from e
    svc.metrics.model_version.labels(req.concept).set(float(image.model_version))
    if svc.safety is not None:
        blocked = _blocked(svc, req, image.model_version, image.png)
        if blocked is not None:
            return blocked
    gen = svc.store.add_generation(req.concept, image.model_version, req.prompt, req.seed, req.steps,
                                   png=image.png if svc.cfg.keep_images else None)
    return Response(image.png, media_type="image/png", headers={
        "X-Generation-Id": gen.id, "X-Model-Version": image.model_version, "X-Concept": req.concept})


def _blocked(svc: Service, req: GenerateRequest, version: str, png: bytes) -> Response | None:
    """None when the filter lets the image through; else the 451 answer, the block recorded."""
    from PIL import Image as PILImage

    with PILImage.open(io.BytesIO(png)) as image:
        found = svc.safety.check(image)  # type: ignore[union-attr]
    if not found.blocked:
        return None
    block_id = svc.store.add_block(req.concept, version, req.prompt, req.seed, req.steps, found.score)
    svc.metrics.safety_blocked.labels(req.concept).inc()
    return JSONResponse({"error": "the output safety filter blocked this image (serve.safety_filter): "
                                  "try another prompt or seed", "blocked": True, "block_id": block_id,
                         "score": found.score}, status_code=451,
                        headers={"X-Model-Version": version, "X-Concept": req.concept})


async def _queued_generate(svc: Service, req: GenerateRequest) -> Response:
    if len(req.prompt) > svc.cfg.max_prompt_chars:
        raise HTTPException(422, f"prompt: at most {svc.cfg.max_prompt_chars} characters (serve.max_prompt_chars)")
    if req.steps > svc.cfg.max_steps:
        raise HTTPException(422, f"steps: at most {svc.cfg.max_steps} (serve.max_steps)")
    if svc.pool is None:
        raise HTTPException(503, "this server was started without image generation")
    future = svc.generating.submit(_generate, svc, req)
    if future is None:
        raise HTTPException(429, f"{svc.generating.capacity} generations running or waiting "
                            "(serve.generate_queue): try again later",
                            {"Retry-After": str(svc.generating.retry_after())})
    return await asyncio.wrap_future(future)


async def _feedback(svc: Service, req: FeedbackRequest) -> dict[str, Any]:
    rating = Rating(req.rating, req.concept, req.generation_id, req.run_id, req.comment, req.corrected_caption)
    try:
        written = await asyncio.wrap_future(svc.writer.submit(rating))
    except FeedbackRejected as e:
        raise HTTPException(e.status, e.message) from e
    svc.metrics.feedback.labels(written.concept, str(req.rating)).inc()
    for event in written.events:  # recorded already; sending may be a network call
        await run_in_threadpool(svc.emit, event)
        svc.metrics.events.labels(event.event).inc()
    return {"id": written.id, "concept": written.concept, "events": [e.event for e in written.events]}


def _routes(app: FastAPI, svc: Service, auth: Any, limit: Any) -> None:
    @app.get("/health")
    async def health() -> dict[str, Any]:  # on the event loop: answered whatever the threads do
        loaded = svc.pool.loaded() if svc.pool else {}
        return {"status": "ok", "feedback_schema": svc.store.version, "served": loaded}

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(svc.metrics.exposition(), media_type=CONTENT_TYPE)

    @app.post("/generate", dependencies=[limit])
    async def generate(req: GenerateRequest) -> Response:
        return await _queued_generate(svc, req)

    @app.post("/feedback", dependencies=[auth, limit], status_code=201)
    async def feedback(req: FeedbackRequest) -> dict[str, Any]:
        return await _feedback(svc, req)

    @app.post("/admin/refresh", dependencies=[auth, limit])
    def refresh() -> dict[str, Any]:
        """Re-read every concept's alias on its next request (instead of within refresh_s)."""
        if svc.pool is not None:
            svc.pool.forget_checks()
        return {"refreshed": True}

    @app.get("/admin/feedback/{concept}", dependencies=[auth, limit])
    def concept_feedback(concept: str) -> dict[str, Any]:
        rows = svc.store.feedback_rows(concept)
        ratings = [r["rating"] for r in rows]
        return {"concept": concept, "count": len(rows),
                "mean_rating": sum(ratings) / len(ratings) if ratings else None,
                "corrected": sum(1 for r in rows if r["corrected_caption"]),
                "safety_blocked": svc.store.count_blocks(concept)}
