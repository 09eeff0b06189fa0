"""Serving an HTTP site on 127.0.0.1 from a daemon thread: the demo site, the fault-injection
site, the bench's generated site and the tests' recorded API answers all run this way."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any


class QuietLog:
    """Handler mixin: no per-request log line on stderr (a crawl makes thousands)."""

    def log_message(self, format: str, *args: Any) -> None:
        """Requests are counted by the sites themselves where a test needs them."""


@contextlib.contextmanager
def serve_in_thread(server: HTTPServer, name: str) -> Iterator[str]:
    """Run ``server`` until the block ends; yields its base URL (``http://127.0.0.1:<port>``).
    The server is shut down and its socket closed even if the block raises."""
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, name=name,
                              daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def send_body(handler: BaseHTTPRequestHandler, status: int, content_type: str, body: bytes,
              headers: dict[str, str] | None = None) -> None:
    """One complete response with its Content-Length."""
    handler.send_response(status)
    handler.send_header("Content-Type", content_type)
    handler.send_header("Content-Length", str(len(body)))
    for key, value in (headers or {}).items():
        handler.send_header(key, value)
    handler.end_headers()
    handler.wfile.write(body)
