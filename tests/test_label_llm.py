"""The label stage's OpenAI-compatible client and LLM tagging, against a real HTTP server on
loopback (tests/chat_server.py): 429 with Retry-After, 5xx, malformed bodies, timeouts, a dead
endpoint, schema-invalid answers (retried with the error, then the fallback), the cache, the
concurrency bound and the rate limit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lora_factory.config import LabelConfig, LlmEndpointConfig
from lora_factory.errors import ConfigError
from lora_factory.llm_client import (
    ChatClient,
    EndpointError,
    RateLimiter,
    ResponseCache,
    map_bounded,
)
from tasks.label.tagging import EndpointChat, TagInput, TagStats, ask_json, tag_items

from .chat_server import Reply, closed_port_url, good, serve_chat, tagger_answer

KEY = "sk-test-a1b2c3d4e5f6-never-written"


class Waits:
    """Records the client's back-off waits instead of sleeping them (the waits are the contract)."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


def endpoint(url: str, **kw) -> LlmEndpointConfig:
    return LlmEndpointConfig(base_url=url, model="test-model", api_key_env="LF_TEST_KEY", backoff_s=0.01, **kw)


def client(url: str, cache: ResponseCache | None = None, waits: Waits | None = None, **kw) -> ChatClient:
    return ChatClient(endpoint(url, **kw), cache, environ={"LF_TEST_KEY": KEY}, sleep=waits or Waits())


def entries(n: int) -> list[TagInput]:
    return [TagInput(str(i), "lighthouse", [("alt_text", f"a striped lighthouse number {i} on a rocky island")])
            for i in range(n)]


class FixedTagger:
    """The offline fallback's interface with fixed answers (its real MiniLM version has its own test)."""

    def tag_many(self, batch):
        return [{"subject": ["fallback"], "style": "s", "movement": "m", "medium": "d", "keywords": ["k"]} for _ in batch]


def test_429_waits_for_retry_after_then_answers() -> None:
    def script(body, n):
        return Reply(429, headers={"Retry-After": "3"}) if n < 2 else good(body, n)

    waits = Waits()
    with serve_chat(script) as server:
        c = client(server.url, waits=waits, max_backoff_s=10)
        answer = c.chat([{"role": "user", "content": "id 7 (topic: fox):\n  - alt_text: a fox"}])
    assert json.loads(answer)["images"][0]["id"] == "7"
    assert len(server.bodies) == 3 and c.stats.http_retries == 2
    assert waits.waits == [3.0, 3.0]  # Retry-After beats the (shorter) exponential backoff
    assert server.authorization == [f"Bearer {KEY}"] * 3


def test_5xx_malformed_bodies_and_dropped_connections_are_retried() -> None:
    replies = [Reply(503), Reply(body=b'{"choices": [ oops'), Reply(body=b'{"no": "choices"}'), Reply(drop=True)]

    def script(body, n):
        return replies[n] if n < len(replies) else good(body, n)

    with serve_chat(script) as server:
        c = client(server.url, max_retries=5)
        answer = c.chat([{"role": "user", "content": "id 1 (topic: fox):\n  - alt_text: a fox"}])
    assert json.loads(answer)["images"][0]["id"] == "1"
    assert c.stats.requests == 5 and c.stats.http_retries == 4


def test_timeouts_are_retried_then_the_endpoint_is_given_up_for_the_run() -> None:
    with serve_chat(lambda body, n: Reply(content="{}", delay_s=3.0)) as server:
        c = client(server.url, timeout_s=0.2, max_retries=1)
        with pytest.raises(EndpointError, match="failed 2 times; last: .*timed out"):
            c.chat([{"role": "user", "content": "hello"}])
        sent = len(server.bodies)
        with pytest.raises(EndpointError):  # no new request: the endpoint is known dead
            c.chat([{"role": "user", "content": "hello again"}])
        assert len(server.bodies) == sent == 2
    assert c.stats.failures == 2


def test_a_refused_key_names_the_variable_not_the_key() -> None:
    with serve_chat(lambda body, n: Reply(401)) as server:
        c = client(server.url)
        with pytest.raises(EndpointError) as e:
            c.chat([{"role": "user", "content": "hello"}])
    assert "HTTP 401" in str(e.value) and "$LF_TEST_KEY" in str(e.value) and KEY not in str(e.value)
    assert len(server.bodies) == 1  # a refusal is not retried


def test_a_dead_endpoint_falls_back_to_the_keyword_tagger_for_every_image() -> None:
    c = client(closed_port_url(), max_retries=2)
    # one worker: with several, batches already in flight when the endpoint is found dead finish
    # their own retries, so the request count would depend on thread scheduling
    tags, stats = tag_items(entries(5), EndpointChat(c), "openai", LabelConfig(tag_batch_size=2),
                            FixedTagger(), workers=1)
    assert [t["tag_source"] for t in tags] == ["keywords"] * 5 and tags[0]["subject"] == ["fallback"]
    assert stats.fallback_images == 5 and stats.endpoint_errors == 3  # three batches
    assert c.stats.requests == 3  # retries only until the endpoint was known dead
    assert c.dead and "failed 3 times" in c.dead


def test_schema_invalid_output_is_retried_with_the_error_then_falls_back() -> None:
    with serve_chat(lambda body, n: Reply(content='Sure! {"images": [{"id": "0", "subject": []}]}')) as server:
        tags, stats = tag_items(entries(3), EndpointChat(client(server.url)), "openai",
                                LabelConfig(tag_batch_size=3, llm=endpoint("x", schema_retries=2)), FixedTagger(), 1)
    assert len(server.bodies) == 3  # the question, then two retries
    retry = server.bodies[1]["messages"]
    assert retry[-2] == {"role": "assistant", "content": 'Sure! {"images": [{"id": "0", "subject": []}]}'}
    assert "does not match the JSON schema" in retry[-1]["content"] and "images.0" in retry[-1]["content"]
    assert server.bodies[0]["response_format"]["json_schema"]["schema"]["required"] == ["images"]
    assert stats.as_dict() == {"calls": 1, "valid_first_try": 0, "retried": 2, "recovered": 0, "invalid": 1,
                                    "endpoint_errors": 0, "fallback_images": 3}
    assert [t["tag_source"] for t in tags] == ["keywords"] * 3


def test_a_retry_that_fixes_the_answer_is_used() -> None:
    def script(body, n):
        if n == 0:  # one image's tags missing: the schema allows it, our check does not
            answer = json.loads(tagger_answer(body))
            answer["images"] = answer["images"][:1]
            return Reply(content=json.dumps(answer))
        return good(body, n)

    with serve_chat(script) as server:
        tags, stats = tag_items(entries(2), EndpointChat(client(server.url)), "openai",
                                LabelConfig(tag_batch_size=2), FixedTagger(), 1)
    assert "no tags for id(s) ['1']" in server.bodies[1]["messages"][-1]["content"]
    assert (stats.retried, stats.recovered, stats.fallback_images) == (1, 1, 0)
    assert [t["tag_source"] for t in tags] == ["openai", "openai"] and tags[1]["medium"] == "photograph"


def test_every_call_is_cached_by_input_so_a_rerun_costs_nothing(tmp_path: Path) -> None:
    cache = ResponseCache(tmp_path / "llm")
    with serve_chat() as server:
        first, _ = tag_items(entries(4), EndpointChat(client(server.url, cache)), "openai",
                             LabelConfig(tag_batch_size=2), None, 2)
        again = client(server.url, cache)
        second, _ = tag_items(entries(4), EndpointChat(again), "openai", LabelConfig(tag_batch_size=2), None, 2)
        changed, _ = tag_items(entries(5), EndpointChat(again), "openai", LabelConfig(tag_batch_size=2), None, 2)
    assert first == second
    assert again.stats.cached == 2 + 2 and again.stats.requests == 1  # only the new third batch was sent
    assert len(server.bodies) == 2 + 1
    assert not any(KEY in p.read_text() for p in (tmp_path / "llm").rglob("*.json"))


def test_concurrency_is_bounded() -> None:
    # Requests wait for each other until 3 are in flight, so the peak is exactly the bound
    # (never more), however slow the machine.
    with serve_chat(hold_until_in_flight=3) as server:
        c = client(server.url, max_concurrency=3)
        msgs = [[{"role": "user", "content": f"id {i} (topic: fox):\n  - alt_text: fox {i}"}] for i in range(9)]
        answers = map_bounded(c.chat, msgs, c.cfg.max_concurrency, "test")
    assert [json.loads(a)["images"][0]["id"] for a in answers] == [str(i) for i in range(9)]  # in job order
    assert server.max_in_flight == 3


def test_rate_limit_spaces_request_starts() -> None:
    now = [100.0]
    slept: list[float] = []

    def sleep(s: float) -> None:
        slept.append(round(s, 6))

    limiter = RateLimiter(4.0, clock=lambda: now[0], sleep=sleep)
    for _ in range(4):
        limiter.acquire()
    assert slept == [0.25, 0.5, 0.75]  # 4 per second: starts at +0, +0.25, +0.5, +0.75
    now[0] += 10
    limiter.acquire()
    assert slept == [0.25, 0.5, 0.75]  # after a pause, no wait


def test_structured_answers_parse_through_code_fences() -> None:
    def chat(messages, schema):
        return "```json\n" + json.dumps({"summary": "red\nfoxes  in snow", "traits": ["Red fur", "bushy, tail"]}) + "\n```"

    from tasks.label.tagging import ConceptSummary

    stats = TagStats()
    answer = ask_json(chat, [{"role": "user", "content": "x"}], ConceptSummary, 0, stats)
    assert answer.summary == "red foxes in snow" and answer.traits == ["red fur", "bushy tail"]
    assert stats.valid_first_try == 1


def test_the_key_is_named_in_config_never_given() -> None:
    with pytest.raises(ValueError, match="NAME of an environment variable"):
        LlmEndpointConfig(api_key_env="sk-abc123")
    from lora_factory.profiles import load_config

    with pytest.raises(ConfigError, match="label.llm.model is empty"):
        load_config("tiny", {"label.tagger": "openai"}, environ={})
