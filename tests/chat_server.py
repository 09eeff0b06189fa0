"""A small OpenAI-compatible chat server on loopback, for the label stage's client tests and bench.

``POST /v1/chat/completions`` answers with a ``Reply`` chosen by ``script(body, n)`` (``n``: the
request's number, from 0). The default script answers like a well-behaved tagger: tags in the
schema for every ``id N`` in the prompt, a concept summary when asked for one, a caption when
the message carries an image. Replies can be delayed (timeouts), be an error status with headers
(429 + Retry-After), a raw body (malformed JSON), or a dropped connection. Every request's body
and Authorization header is recorded, and the peak number of requests in flight is tracked
(``hold_until_in_flight`` makes requests wait for each other, to measure a concurrency bound
without depending on timing).
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from spiders.sources.loopback import QuietLog, send_body, serve_in_thread


@dataclass
class Reply:
    status: int = 200
    content: str | None = None  # the assistant's text (wrapped in a chat-completions body)
    body: bytes | None = None  # a raw body instead (e.g. malformed JSON)
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    drop: bool = False  # close the connection without answering


def tagger_answer(body: dict[str, Any]) -> str:
    """What a good model answers: schema-valid tags, a summary, or a caption."""
    last = next(m["content"] for m in body["messages"] if m["role"] == "user")  # the task, not a retry note
    if isinstance(last, list):  # a VLM request: text + image
        return "A striped lighthouse on a rocky island under a grey sky."
    if "one-line summary" in last:
        return json.dumps({"summary": "striped lighthouses on rocky islands", "traits": ["striped tower"]})
    ids = re.findall(r"^id (\S+) \(topic: ([^)]*)\)", last, re.MULTILINE)
    return json.dumps({"images": [
        {"id": i, "subject": [topic or "thing"], "style": "realistic", "movement": "none", "medium": "photograph",
         "keywords": ["coast", "sea", "rocks", "sky", "tower"]} for i, topic in ids]})


def good(body: dict[str, Any], n: int) -> Reply:
    return Reply(content=tagger_answer(body))


@dataclass
class ChatServer:
    script: Callable[[dict[str, Any], int], Reply] = good
    latency_s: float = 0.0
    hold_until_in_flight: int = 0  # >0: each request waits (up to 10 s) until this many are in flight
    base_url: str = ""
    bodies: list[dict[str, Any]] = field(default_factory=list)
    authorization: list[str | None] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _cond: threading.Condition = field(init=False)

    def __post_init__(self) -> None:
        self._cond = threading.Condition(self._lock)

    @property
    def url(self) -> str:
        return f"{self.base_url}/v1"

    def handle(self, body: dict[str, Any], auth: str | None) -> Reply:
        with self._cond:
            n = len(self.bodies)
            self.bodies.append(body)
            self.authorization.append(auth)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            self._cond.notify_all()
            if self.hold_until_in_flight:
                self._cond.wait_for(lambda: self.in_flight >= self.hold_until_in_flight, timeout=10)
        try:
            reply = self.script(body, n)
            time.sleep(self.latency_s + reply.delay_s)
            return reply
        finally:
            with self._cond:
                self.in_flight -= 1


def completion(content: str, model: str) -> bytes:
    return json.dumps({"id": "chatcmpl-test", "object": "chat.completion", "model": model,
                       "choices": [{"index": 0, "finish_reason": "stop",
                                    "message": {"role": "assistant", "content": content}}]}).encode()


@contextmanager
def serve_chat(script: Callable[[dict[str, Any], int], Reply] = good, latency_s: float = 0.0,
               hold_until_in_flight: int = 0) -> Iterator[ChatServer]:
    """Serve on 127.0.0.1 (a free port) for the block; ``server.url`` is the ``base_url``."""
    state = ChatServer(script, latency_s, hold_until_in_flight)

    class Handler(QuietLog, BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            if self.path != "/v1/chat/completions":
                send_body(self, 404, "application/json", b'{"error": "not found"}')
                return
            body = json.loads(raw)
            reply = state.handle(body, self.headers.get("Authorization"))
            if reply.drop:
                self.close_connection = True
                self.connection.close()
                return
            if reply.body is not None:
                data = reply.body
            elif reply.status == 200:
                data = completion(reply.content or "", body.get("model", ""))
            else:
                data = json.dumps({"error": {"message": f"status {reply.status}"}}).encode()
            try:
                send_body(self, reply.status, "application/json", data, reply.headers)
            except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout)
                pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    with serve_in_thread(server, "chat-server") as url:
        state.base_url = url
        yield state


def closed_port_url() -> str:
    """A loopback base URL nothing listens on (a dead endpoint)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"
