"""Any text a user can type as a topic works wherever a name is derived from it (issue 10, item 1).

MLflow metric, param and tag names are checked with MLflow's own validators; file names by
creating the file; Redis key parts by the characters Redis patterns and our key layout give a
meaning to; Prefect flow-run names with Prefect's own schema. Tracking is exercised on a real
SQLite store, since that is where ``crawl.seeds.<topic>`` used to fail inside ``start_run``.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from mlflow.utils.validation import _validate_metric, _validate_param, _validate_tag
from prefect.server.schemas.actions import FlowRunUpdate

from lora_factory.errors import ConfigError
from lora_factory.lifecycle import finish_run, normalize_topics, start_run
from lora_factory.names import control_characters, mlflow_key, run_label, topic_key
from lora_factory.profiles import load_config
from lora_factory.tracking import Tracker

TOPICS = ["rock & roll", "mario (game)", "C++", "what's up", "🚀 rocket", "../etc", "x" * 10_000,
          "lighthouse\n", "Lighthouse", "..", ".", "a/b", "%s{0}", "日本の灯台", "👨\u200d👩\u200d👧"]
REDIS_SPECIAL = set(string.whitespace) | set(":*?[]\\{}")
FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _with_examples(test):  # noqa: ANN001, ANN202 - a decorator
    for topic in TOPICS:
        test = example(topic)(test)
    return test


@_with_examples
@given(st.text())
@FAST
def test_topic_key_is_a_valid_name_everywhere(tmp_path: Path, topic: str) -> None:
    key = topic_key(topic)
    assert key == topic_key(topic)  # stable
    _validate_metric(f"images_per_topic.{key}", 1.0, 0, 0)
    _validate_param(f"crawl.seeds.{key}", "https://example.org/")
    _validate_tag(f"lora_factory.topic.{key}", topic)
    # A file name: one component that stays in its folder, and a file can be made with it.
    assert "/" not in key and key not in (".", "..") and len(key.encode()) <= 255
    path = tmp_path / key
    assert path.resolve().parent == tmp_path.resolve()
    path.write_text(topic, encoding="utf-8", errors="surrogatepass")
    assert path.is_file()
    path.unlink()
    # A Redis key part: nothing that splits our ``prefix:run:...`` layout or means a pattern.
    assert key.isascii() and not (set(key) & REDIS_SPECIAL)


@given(st.text(), st.text())
@settings(max_examples=300, deadline=None)
def test_different_topics_never_share_a_key(a: str, b: str) -> None:
    if a != b:
        assert topic_key(a) != topic_key(b)


@given(st.text())
@settings(max_examples=300, deadline=None)
@example("..x")
@example("a/../b")
@example("x" * 300)
@example("train.rank")
def test_mlflow_key_makes_any_name_valid(name: str) -> None:
    key = mlflow_key(name)
    _validate_metric(key, 1.0, 0, 0)
    _validate_param(key, "v")
    _validate_tag(key, "v")
    assert len(key) <= 250
    assert mlflow_key(key) == key  # a valid key comes back unchanged
    assert mlflow_key("train.rank") == "train.rank"


@_with_examples
@given(st.text())
@settings(max_examples=300, deadline=None)
def test_run_labels_are_printable_and_accepted_by_prefect(topic: str) -> None:
    from flows.factory import run_name

    for name in (run_label([topic, "sailboat"]), run_name({"profile": "tiny", "topics": [topic]})):
        assert name.isprintable() and len(name) <= 200
        assert FlowRunUpdate(name=name).name == name


@_with_examples
@given(st.lists(st.text(), max_size=4))
@settings(max_examples=300, deadline=None)
def test_preflight_rejects_only_empty_and_control_characters(topics: list[str]) -> None:
    try:
        clean = normalize_topics(topics)
    except ConfigError as e:
        line = str(e)
        assert "\n" not in line and len(line) < 400
        bad = [c for t in topics for c in control_characters(" ".join(t.split()))]
        if bad:
            assert "control character U+" in line and bad[0] in line
        else:
            assert line.startswith("no topics given") and not any(t.strip() for t in topics)
        return
    assert clean and all(t == " ".join(t.split()) and t for t in clean)
    assert not any(control_characters(t) for t in clean)


def test_a_control_character_is_named_in_one_line() -> None:
    with pytest.raises(ConfigError) as info:
        normalize_topics(["lighthouse", "rock\x07roll"])
    assert str(info.value) == ("topic 'rock<U+0007>roll' contains the control character U+0007: "
                               "remove it (a topic may hold any other text)")
    assert normalize_topics(["  rock &\troll ", "ROCK & ROLL", "🚀 rocket"]) == ["rock & roll", "🚀 rocket"]


@pytest.fixture(scope="module")
def tracker(tmp_path_factory: pytest.TempPathFactory) -> Tracker:
    root = tmp_path_factory.mktemp("names-mlflow")
    return Tracker(f"sqlite:///{root}/mlflow.db", "names", root / "artifacts")


@_with_examples
@given(st.text(min_size=1))
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_tracking_takes_any_topic_in_names_and_keeps_it_verbatim_in_values(tracker: Tracker, topic: str) -> None:
    run = tracker.start_parent(f"run {topic}", tags={"lora_factory.topics": topic, f"topic.{topic}": "1"})
    tracker.log_params(run, {"crawl": {"seeds": {topic: ["https://example.org/"]}}, "topics": [topic]})
    tracker.log_metrics(run, {f"images_per_topic.{topic}": 3.0})
    data = tracker.client.get_run(run).data
    assert data.metrics == {mlflow_key(f"images_per_topic.{topic}"): 3.0}
    assert data.params[mlflow_key(f"crawl.seeds.{topic}")] == '["https://example.org/"]'
    if len(data.params["topics"]) < 6000:  # params are cut at MLflow's 6000 characters
        assert json.loads(data.params["topics"]) == [topic]  # JSON keeps even a lone surrogate
    tracker.end(run)


def test_start_run_takes_seeds_for_any_topic_and_records_them(tmp_path: Path) -> None:
    """Issue 10 item 1: ``crawl.seeds.<topic>`` params used to fail inside start_run and leave a
    run that said "running" forever."""
    topics = TOPICS[:7]
    seeds = {t: ["https://example.org/"] for t in topics}
    cfg = load_config("tiny", {"home": str(tmp_path / "home"), "crawl.source": "seeds", "crawl.seeds": seeds})
    ref = start_run(cfg, topics)
    state = json.loads((tmp_path / "home" / "runs" / ref.run_id / "run.json").read_text())
    assert state["topics"] == topics and state["status"] == "running"
    params = ref.tracker().client.get_run(ref.parent_run_id).data.params
    assert all(params[mlflow_key(f"crawl.seeds.{t}")] == '["https://example.org/"]' for t in topics)
    finish_run(ref, ok=True)
    assert json.loads((tmp_path / "home" / "runs" / ref.run_id / "run.json").read_text())["status"] == "done"
