"""``dag``: the stages, what each reads and writes, and every edge between them."""

from __future__ import annotations

from typing import Annotated

import typer


def dag(markdown: Annotated[bool, typer.Option("--markdown", help="Print markdown (as attached to each Prefect run).")] = False) -> None:
    """Print the factory's DAG as the stage catalog declares it."""
    from lora_factory.dag import render_markdown, render_text

    typer.echo(render_markdown() if markdown else render_text())
