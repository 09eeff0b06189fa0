"""Prometheus metrics of the service, in a registry of its own (two apps in one process, as in
the tests, do not share counters): requests, latency, errors, the served version per concept."""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class ServeMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("lora_serve_requests", "HTTP requests by route and status",
                                ["route", "method", "status"], registry=self.registry)
        self.latency = Histogram("lora_serve_request_seconds", "Request latency by route",
                                 ["route"], buckets=BUCKETS, registry=self.registry)
        self.errors = Counter("lora_serve_errors", "Answers with a 5xx status, by route",
                              ["route"], registry=self.registry)
        self.model_version = Gauge("lora_serve_model_version", "Registered version served per concept",
                                   ["concept"], registry=self.registry)
        self.feedback = Counter("lora_serve_feedback", "Ratings received, by concept and rating",
                                ["concept", "rating"], registry=self.registry)
        self.generate_queue = Gauge("lora_serve_generate_queue", "Generations running or waiting",
                                    registry=self.registry)
        self.safety_blocked = Counter("lora_serve_safety_blocked", "Outputs the safety filter blocked",
                                      ["concept"], registry=self.registry)
        self.events = Counter("lora_serve_retrain_events", "Retrain events emitted",
                              ["event"], registry=self.registry)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Pure ASGI middleware (cheaper than ``BaseHTTPMiddleware``): counts and times each HTTP
    request under its route template, so ``/generate`` is one series whatever the body."""

    def __init__(self, app: Any, metrics: ServeMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = {"code": 500}

        async def send_status(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")
            name = getattr(route, "path", None) or "unmatched"
            self.metrics.latency.labels(name).observe(time.perf_counter() - start)
            self.metrics.requests.labels(name, scope["method"], str(status["code"])).inc()
            if status["code"] >= 500:
                self.metrics.errors.labels(name).inc()
