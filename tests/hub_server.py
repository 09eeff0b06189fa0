"""A loopback stand-in for the Hugging Face Hub's upload API (repo create, preupload, commit),
enough for ``HfApi.upload_folder`` of small files sent inline ("regular" upload mode). It
records each request (path, headers, body) and the files of each commit."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class HubRecord:
    requests: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)  # method, path, headers (lower-case)
    files: dict[str, bytes] = field(default_factory=dict)
    commit_messages: list[str] = field(default_factory=list)
    created: list[dict[str, Any]] = field(default_factory=list)


def _handler(record: HubRecord) -> type[BaseHTTPRequestHandler]:
    class Hub(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            """Quiet: the test reads the recorded requests, not stderr."""

        def _answer(self, status: int, body: Any) -> None:
            raw = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            record.requests.append(("POST", self.path, {k.lower(): v for k, v in self.headers.items()}))
            base = f"http://{self.headers['Host']}"
            if self.path == "/api/repos/create":
                payload = json.loads(body)
                record.created.append(payload)
                return self._answer(200, {"url": f"{base}/{payload.get('organization')}/{payload['name']}"})
            if self.path == "/api/validate-yaml":  # the model card's front matter
                return self._answer(200, {"errors": [], "warnings": []})
            if "/preupload/" in self.path:
                files = json.loads(body)["files"]
                return self._answer(200, {"files": [{"path": f["path"], "uploadMode": "regular",
                                                     "shouldIgnore": False} for f in files]})
            if "/commit/" in self.path:
                for line in body.decode().splitlines():
                    item = json.loads(line)
                    if item["key"] == "header":
                        record.commit_messages.append(item["value"]["summary"])
                    elif item["key"] == "file":
                        record.files[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
                repo = self.path.split("/api/models/", 1)[1].split("/commit/", 1)[0]
                return self._answer(200, {"commitUrl": f"{base}/{repo}/commit/{'a' * 40}",
                                          "commitOid": "a" * 40, "pullRequestUrl": None})
            return self._answer(404, {"error": f"not served here: {self.path}"})

        def do_GET(self) -> None:  # noqa: N802
            record.requests.append(("GET", self.path, {k.lower(): v for k, v in self.headers.items()}))
            self._answer(404, {"error": f"not served here: {self.path}"})

    return Hub


def go_online(monkeypatch: Any) -> None:
    """The suite runs with HF_HUB_OFFLINE=1, which huggingface_hub reads once at import; lift it
    for a test whose hub is this loopback server."""
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)


@contextmanager
def fake_hub() -> Iterator[tuple[str, HubRecord]]:
    """(base URL, record) of a hub stand-in on a free loopback port."""
    record = HubRecord()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(record))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", record
    finally:
        server.shutdown()
        server.server_close()
