"""The one way stages become Prefect tasks, so retries/caching policy is set in one place.

Caching is the flow's business (``lora_factory.stage_keys``: a stage's key is in run.json), so
Prefect's own task cache is off. Retries are on, but only for transient failures: a service that
did not answer (the tracking server, an S3 store, an endpoint: refused or reset connections,
timeouts, HTTP 429/5xx). A stage is safe to retry: a failed attempt leaves its outputs as they
were, and the retry continues from the stage's scratch (crawl journal, training checkpoints).
Anything else (a bad setting, an empty crawl, a bug) fails at once: retrying cannot fix it.
"""

from __future__ import annotations

import http.client
import urllib.error
from collections.abc import Callable
from typing import Any, TypeVar

from prefect import task
from prefect.cache_policies import NO_CACHE

from lora_factory.errors import FactoryError

F = TypeVar("F", bound=Callable[..., Any])

TRANSIENT_RETRIES = 2
RETRY_DELAYS_S = [15.0, 60.0]


def _transient_types() -> tuple[type[BaseException], ...]:
    """Connection failures of the clients the stages use (requests by MLflow, botocore by S3)."""
    import requests
    from botocore.exceptions import ConnectionError as BotoConnectionError

    return (ConnectionError, TimeoutError, http.client.RemoteDisconnected, BotoConnectionError,
            requests.exceptions.ConnectionError, requests.exceptions.Timeout)


def is_transient(error: BaseException) -> bool:
    """Whether ``error``, or an error it was raised from or during, is a service not answering.
    A ``FactoryError`` is not: it is the one line a user acts on (a stage already judged it)."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen and not isinstance(current, FactoryError):
        seen.add(id(current))
        if isinstance(current, urllib.error.HTTPError):
            if current.code == 429 or current.code >= 500:
                return True
        elif isinstance(current, (urllib.error.URLError, *_transient_types())):
            return True
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)
    return False


def retry_if_transient(task_: Any, task_run: Any, state: Any) -> bool:
    """Prefect's ``retry_condition_fn``: retry a failed stage only when its error is transient."""
    try:
        state.result()
    except BaseException as e:  # noqa: BLE001 - the stage's error, whatever it is, is classified
        return is_transient(e)
    return False


def stage_task(name: str) -> Callable[[F], F]:
    """A stage as a Prefect task: no Prefect cache, retries with backoff on transient errors."""

    def wrap(fn: F) -> F:
        return task(name=name, cache_policy=NO_CACHE, retries=TRANSIENT_RETRIES,  # type: ignore[return-value]
                    retry_delay_seconds=RETRY_DELAYS_S, retry_condition_fn=retry_if_transient)(fn)

    return wrap
