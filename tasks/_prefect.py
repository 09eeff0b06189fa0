"""The one way stages become Prefect tasks, so retries/caching policy is set in one place."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from prefect import task
from prefect.cache_policies import NO_CACHE

F = TypeVar("F", bound=Callable[..., Any])


def stage_task(name: str) -> Callable[[F], F]:
    """A task that never caches (a stage's output lives in the run dir, and run.json says whether
    it is done) and never retries on its own (a failed stage is resumed by re-running the run)."""

    def wrap(fn: F) -> F:
        return task(name=name, cache_policy=NO_CACHE, retries=0)(fn)  # type: ignore[return-value]

    return wrap
