"""``serve``: the HTTP service of each concept's champion LoRA, with feedback and retrain triggers."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from lora_factory.errors import ConfigError, FactoryError
from lora_factory.profiles import location_config
from lora_factory.secrets import redact_url

from .common import HomeOpt, SetOpt, TrackingOpt, fail, overrides, runtime_defaults

MIN_TOKEN = 16


def _prefect_api_of_home_server(cfg: object) -> None:
    """Retrain events go to this home's `lora-factory server` unless PREFECT_API_URL says else."""
    from .local_services import running_server

    if "PREFECT_API_URL" not in os.environ:
        state = running_server(cfg)  # type: ignore[arg-type]
        if state is not None:
            os.environ["PREFECT_API_URL"] = state.api_url


def serve(
    host: Annotated[str | None, typer.Option("--host", help="Address to bind (default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option("--port", help="Port (default 8000).")] = None,
    sets: SetOpt = None,
    home: HomeOpt = None,
    tracking_uri: TrackingOpt = None,
) -> None:
    """Serve each concept's `champion` LoRA over HTTP: POST /generate, POST /feedback (bearer
    token from $LORA_FACTORY_SERVE_TOKEN), GET /health, GET /metrics."""
    runtime_defaults()
    ov = overrides(sets, home=home, tracking_uri=tracking_uri)
    ov.update({k: v for k, v in (("serve.host", host), ("serve.port", port)) if v is not None})
    try:
        cfg = location_config(ov)
        token = os.environ.get(cfg.serve.token_env, "")
        if len(token) < MIN_TOKEN:
            raise ConfigError(f"set {cfg.serve.token_env} to a bearer token of at least {MIN_TOKEN} "
                              "characters: the feedback and admin routes need it")
        _prefect_api_of_home_server(cfg)
        from deploy.serving.app import build_app
        from deploy.serving.service import feedback_url, make_service

        svc = make_service(cfg, token)
    except FactoryError as e:
        fail(e)
    import uvicorn

    typer.echo(f"serving http://{cfg.serve.host}:{cfg.serve.port}  (feedback store "
               f"{redact_url(feedback_url(cfg))}, models from {redact_url(cfg.tracking.uri)})")
    try:
        uvicorn.run(build_app(svc), host=cfg.serve.host, port=cfg.serve.port, log_level="warning",
                    access_log=False)
    finally:
        svc.close()
