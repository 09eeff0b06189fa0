"""A loopback HTTP server replaying recorded Wikimedia Commons and Openverse API responses.

The fixtures (``tests/fixtures/{wikimedia,openverse}/*.json``) follow the real APIs' documented
formats; ``{{BASE}}`` in them becomes this server's base URL, so the image and page URLs they
point at are served here too (``extra`` maps a path to ``(content type, bytes)``).

Routes: ``/w/api.php`` (``list=categorymembers`` / ``list=search`` pages chosen by the continue
parameter, ``prop=imageinfo`` filtered to the requested titles, ``srsearch=broken`` -> an API
error), ``/v1/images/`` (``page=N`` -> ``images_pageN.json``, ``page_size>20`` -> 400,
``q=fail`` -> 500), anything in ``extra``; every request path+query is logged in ``requests``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from spiders.sources.loopback import QuietLog, send_body, serve_in_thread

FIXTURES = Path(__file__).resolve().parent / "fixtures"


@dataclass
class FixtureServer:
    base_url: str = ""
    extra: dict[str, tuple[str, bytes]] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)

    def fixture(self, name: str) -> Any:
        text = (FIXTURES / name).read_text(encoding="utf-8")
        return json.loads(text.replace("{{BASE}}", self.base_url))

    def route(self, path: str, q: dict[str, str]) -> tuple[int, str, bytes]:
        if path in self.extra:
            ctype, body = self.extra[path]
            return 200, ctype, body
        if path == "/w/api.php":
            return 200, "application/json", json.dumps(self._wikimedia(q)).encode()
        if path == "/v1/images/":
            if q.get("q") == "fail":
                return 500, "text/html", b"<h1>Internal Server Error</h1>"
            if int(q.get("page_size", "20")) > 20:
                return 400, "application/json", json.dumps(self.fixture("openverse/error_400.json")).encode()
            name = f"openverse/images_page{int(q.get('page', '1'))}.json"
            if not (FIXTURES / name).exists():
                return 400, "application/json", b'{"detail": "Invalid page."}'
            return 200, "application/json", json.dumps(self.fixture(name)).encode()
        return 404, "text/plain", b"not found"

    def _wikimedia(self, q: dict[str, str]) -> Any:
        if q.get("srsearch") == "broken":
            return self.fixture("wikimedia/error.json")
        if q.get("list") == "categorymembers":
            if q.get("cmtitle") != "Category:Red panda":
                return {"batchcomplete": True, "query": {"categorymembers": []}}
            return self.fixture(f"wikimedia/categorymembers_{2 if 'cmcontinue' in q else 1}.json")
        if q.get("list") == "search":
            return self.fixture(f"wikimedia/search_{2 if 'sroffset' in q else 1}.json")
        if q.get("prop") == "imageinfo":
            wanted = q.get("titles", "").split("|")
            data = self.fixture("wikimedia/imageinfo.json")
            pages = [p for p in data["query"]["pages"] if p["title"] in wanted]
            known = {p["title"] for p in pages}
            pages += [{"ns": 6, "title": t, "missing": True} for t in wanted if t not in known]
            return {"batchcomplete": True, "query": {"pages": pages}}
        return {"error": {"code": "badvalue", "info": "Unrecognized parameters."}}


@contextmanager
def serve_fixtures(extra: dict[str, tuple[str, bytes]] | None = None) -> Iterator[FixtureServer]:
    """Serve the fixtures on 127.0.0.1 (a free port) for the duration of the block."""
    state = FixtureServer(extra=dict(extra or {}))

    class Handler(QuietLog, BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            parts = urlsplit(self.path)
            state.requests.append(self.path)
            q = {k: v[-1] for k, v in parse_qs(parts.query).items()}
            send_body(self, *state.route(parts.path, q))

    with serve_in_thread(ThreadingHTTPServer(("127.0.0.1", 0), Handler), "fixture-api") as base:
        state.base_url = base
        yield state
