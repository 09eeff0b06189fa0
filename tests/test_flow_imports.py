"""A fully cached re-run imports the flow and nothing of the stages: the flow module must not
pull in torch, diffusers, transformers or open_clip (each stage's task is imported when it runs)."""

from __future__ import annotations

from .child_imports import heavy_imports_of


def test_the_flow_imports_no_ml_library() -> None:
    assert heavy_imports_of("flows.factory") == "[]"


def test_the_cli_decides_a_cached_rerun_without_ml_libraries() -> None:
    """``cli.cached`` ends a re-run with nothing to do before the flow: it must stay as light."""
    assert heavy_imports_of("cli.cached") == "[]"
