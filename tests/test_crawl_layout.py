"""The spiders package has no import cycle, and its parent side does not load Scrapy."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from spiders.crawl import REPO_ROOT

SPIDERS = REPO_ROOT / "spiders"


def _module(path: Path) -> str:
    return ".".join(path.relative_to(REPO_ROOT).with_suffix("").parts).removesuffix(".__init__")


def _imports(path: Path) -> set[str]:
    """The ``spiders`` modules ``path`` imports (at any level: a lazy import is still an edge)."""
    package = _module(path) if path.name == "__init__.py" else _module(path).rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level:
            parts = package.split(".")
            base = parts[: len(parts) - (node.level - 1)]
            found.add(".".join([*base, node.module] if node.module else base))
        elif isinstance(node, ast.ImportFrom):
            found.add(node.module or "")
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {n for n in found if n == "spiders" or n.startswith("spiders.")}


def test_spiders_modules_import_each_other_without_a_cycle() -> None:
    graph = {_module(p): _imports(p) - {_module(p)} for p in SPIDERS.rglob("*.py")}
    done: set[str] = set()

    def visit(module: str, path: tuple[str, ...]) -> None:
        assert module not in path, f"import cycle: {' -> '.join((*path, module))}"
        if module in done:
            return
        for dep in sorted(graph.get(module, ())):
            visit(dep, (*path, module))
        done.add(module)

    for module in sorted(graph):
        visit(module, ())
    assert "spiders.topic_spider" not in graph["spiders.frontier"]
    assert not graph["spiders.crawl"] & {"spiders.workers", "spiders.frontier", "spiders.redis_keys"}


def test_the_parent_side_does_not_import_scrapy() -> None:
    code = "import sys, spiders.workers; print(sorted(m for m in sys.modules if m.startswith('scrapy')))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"
