"""The factory's DAG, drawn from the catalog's declarations: as text for ``lora-factory dag``
and as markdown for the Prefect artifact each run attaches."""

from __future__ import annotations

from . import catalog


def render_text() -> str:
    """Each stage with what it reads (and from whom) and writes, then every edge."""
    lines: list[str] = []
    for name in catalog.STAGES:
        spec = catalog.spec(name)
        lines.append(f"{name}: {spec.doc}")
        for out in spec.reads:
            lines.append(f"  reads  {out.key:<22} {out.run_path}")
        if not spec.reads:
            lines.append("  reads  (the run's topics and config)")
        for out in spec.writes:
            optional = " (optional)" if not out.required else ""
            lines.append(f"  writes {out.key:<22} {out.run_path}{optional}  {out.doc}")
    lines.append("")
    lines.append("edges (producer -> consumer: output)")
    for producer, consumer, out in catalog.edges():
        lines.append(f"  {producer} -> {consumer}: {out.key}")
    return "\n".join(lines)


def render_markdown(done: dict[str, str] | None = None) -> str:
    """A markdown page of the DAG; ``done`` maps stage -> status for a run's view."""
    done = done or {}
    rows = ["| stage | status | reads | writes |", "|---|---|---|---|"]
    for name in catalog.STAGES:
        spec = catalog.spec(name)
        reads = "<br>".join(f"`{o.run_path}`" for o in spec.reads) or "topics, config"
        writes = "<br>".join(f"`{o.run_path}`" for o in spec.writes)
        rows.append(f"| **{name}** | {done.get(name, '')} | {reads} | {writes} |")
    chain = " → ".join(catalog.STAGES)
    edges = "\n".join(f"- {p} → {c}: `{o.key}`" for p, c, o in catalog.edges())
    return f"# LoRA Factory DAG\n\n{chain}\n\n" + "\n".join(rows) + f"\n\n## Edges\n\n{edges}\n"
