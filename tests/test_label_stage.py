"""The label task end to end on a real run (run store, MLflow, tiny models): tags and VLM captions
from an OpenAI-compatible server on loopback, the key never written anywhere; the report, the
datasheet and the metrics; the offline MiniLM tagger; the local tagger's cache; and the kohya
metadata the train stage stamps from label's outputs."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from lora_factory.catalog import CRAWL_STATS, CURATE_DATASET, LABEL_CAPTION_STATS, LABEL_LABELS
from lora_factory.config import LabelConfig
from lora_factory.profiles import load_config
from lora_factory.runstore import DONE
from spiders.sources.demo_site import generate_demo_site

from .chat_server import serve_chat
from .curate_demo_items import demo_items

KEY = "sk-label-9f8e7d6c5b4a-must-never-be-written"
KEY_ENV = "LF_LABEL_TEST_KEY"


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture(scope="module")
def task_run(tmp_path_factory: pytest.TempPathFactory, model_cache: Path) -> dict:
    """label_task on a run whose crawl and curate are done, tagging and VLM captions through the
    loopback server, with the API key in the environment."""
    from lora_factory.lifecycle import start_run
    from tasks.label import label_task

    tmp = tmp_path_factory.mktemp("label-task")
    home = tmp / "home"
    home.mkdir()
    (home / "models").symlink_to(model_cache)
    site = generate_demo_site(tmp / "site", seed=0)
    log = Lines()
    logging.getLogger().addHandler(log)
    os.environ[KEY_ENV] = KEY
    try:
        with serve_chat() as server:
            endpoint = {"base_url": server.url, "api_key_env": KEY_ENV}
            cfg = load_config("tiny", {
                "home": str(home), "label.tagger": "openai", "label.llm": {**endpoint, "model": "tagger"},
                "label.vlm": {**endpoint, "model": "vlm"},
                "label.caption_sources": ["alt_text", "figure_caption", "title_text", "captioner", "vlm"],
            }, environ={})
            ref = start_run(cfg, ["lighthouse", "sailboat"])
            run = ref.run_dir()
            crawl = Path(run.store.local_path(f"{run.key}/crawl"))
            items, truth = demo_items(site, crawl)
            CRAWL_STATS.write(crawl, {"pages_noai": 2, "rejections": {"noai": 3}, "robots_forbidden": 1})
            run.set_stage("crawl", DONE)
            kept = [it for it in items if truth[it["item_id"]]["kind"] == "clean" and it["topic"] != "cactus"]
            CURATE_DATASET.write(Path(run.store.local_path(f"{run.key}/curate")), kept)
            run.set_stage("curate", DONE)
            summary = label_task.fn(ref)
    finally:
        del os.environ[KEY_ENV]
        logging.getLogger().removeHandler(log)
    return {"home": home, "run": run, "ref": ref, "server": server, "kept": kept, "summary": summary,
            "log": log.lines, "label": run.stage_path("label")}


def test_the_api_key_is_sent_but_never_written(task_run: dict) -> None:
    server = task_run["server"]
    assert server.bodies and server.authorization == [f"Bearer {KEY}"] * len(server.bodies)
    key = KEY.encode()
    checked = 0
    for root in (Path(task_run["run"].store.local_path(task_run["run"].key)), task_run["home"]):
        for path in root.rglob("*"):
            if path.is_file() and "models" not in path.relative_to(task_run["home"]).parts[:1]:
                assert key not in path.read_bytes(), path
                checked += 1
    assert checked > 20  # the run dir, mlflow.db, mlartifacts and the LLM cache were all there to read
    assert (task_run["home"] / "mlflow.db").is_file() and any((task_run["home"] / "cache" / "llm").rglob("*.json"))
    assert not any(KEY in line for line in task_run["log"])


def test_tags_vlm_captions_and_summary_come_from_the_endpoint(task_run: dict) -> None:
    labels = LABEL_LABELS.read(task_run["label"]).to_pylist()
    refused = [it for it in task_run["kept"] if it["license"] == "all-rights-reserved"]
    assert refused and len(labels) == len(task_run["kept"]) - len(refused)  # tiny allows unknown, not ARR
    assert all(lab["tag_source"] == "openai" and lab["medium"] == "photograph" for lab in labels)
    assert all("vlm" in {c["source"] for c in lab["candidates"]} for lab in labels)
    assert all(c["score"] is not None for lab in labels for c in lab["candidates"])  # re-ranked
    vlm_requests = [b for b in task_run["server"].bodies if b["model"] == "vlm"]
    assert len(vlm_requests) == len(labels)
    image_part = vlm_requests[0]["messages"][0]["content"][1]
    assert image_part["type"] == "image_url" and image_part["image_url"]["url"].startswith("data:image/jpeg;base64,")
    stats = LABEL_CAPTION_STATS.read(task_run["label"])
    assert stats.concept_summary == "striped lighthouses on rocky islands"
    assert stats.tagger["valid_first_try"] == stats.tagger["calls"] >= 2 and stats.tagger["fallback_images"] == 0
    assert task_run["summary"] == {"labelled": len(labels), "dropped": len(refused)}


def test_report_datasheet_and_metrics_reach_mlflow(task_run: dict) -> None:
    from mlflow.tracking import MlflowClient

    label = task_run["label"]
    report = (label / "report.html").read_text()
    labels = LABEL_LABELS.read(label).to_pylist()
    assert all(lab["caption"].replace("'", "&#x27;") in report for lab in labels)
    assert "models.clip_scorer = tiny:clip is a random-weight tiny model" in report
    assert "models.captioner = tiny:captioner is a random-weight tiny model" in report
    assert report.count("data:image/jpeg;base64,") >= len(labels)  # a thumbnail per kept image
    assert "tagger: medium" in report and 'title="photograph"' in report  # the tag frequency bars
    sheet = (label / "datasheet.md").read_text()
    assert "2 page(s) opted out" in sheet and "3 image(s) refused" in sheet and "1 request(s) refused" in sheet
    state = task_run["run"].state()
    client = MlflowClient(state["mlflow_tracking_uri"])
    run_id = state["stages"]["label"]["mlflow_run_id"]
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert {"report.html", "datasheet.md", "captions.csv", "caption_stats.json", "kohya_dataset.toml"} <= artifacts
    metrics = client.get_run(run_id).data.metrics
    assert metrics["labelled"] == len(labels) and metrics["dropped_license"] >= 1
    assert metrics["tagger_valid_first_try"] >= 2 and 0 <= metrics["rerank_share"] <= 1
    params = client.get_run(run_id).data.params
    assert params["llm.api_key_env"] == KEY_ENV and KEY not in str(params)


def test_the_offline_keyword_tagger_uses_minilm(model_cache: Path) -> None:
    from lora_factory.models import load_text_embedder
    from tasks.label.keywords import MEDIUMS, MOVEMENTS, STYLES, KeywordTagger

    embedder = load_text_embedder("sentence-transformers/all-MiniLM-L6-v2", model_cache)
    tagger = KeywordTagger(lambda t: embedder.encode(t, normalize_embeddings=True, show_progress_bar=False))
    texts = ["a red and white striped lighthouse on a rocky island at dusk", "storm waves break against the rocks"]
    tags, empty = tagger.tag_many([(texts, "lighthouse"), ([], None)])
    assert tags["subject"][0] == "lighthouse" and 1 <= len(tags["subject"]) <= 3
    words = " ".join(texts).lower()
    assert 5 <= len(tags["keywords"]) <= 8 and all(k in words for k in tags["keywords"])
    assert len(set(tags["keywords"])) == len(tags["keywords"])
    assert tags["style"] in STYLES and tags["medium"] in MEDIUMS and tags["movement"] in MOVEMENTS
    assert empty["keywords"] == [] and empty["subject"] == []
    # Semantics, not string overlap: a pencil sketch is closer to its medium than a photograph is.
    (sketch,) = tagger.tag_many([(["a rough pencil sketch of a cat, graphite on paper"], None)])
    assert sketch["medium"] == "pencil sketch"


def test_the_local_tagger_falls_back_and_is_cached(tmp_path: Path, model_cache: Path) -> None:
    from lora_factory.llm_client import ResponseCache
    from lora_factory.models import load_tagger
    from tasks.label.tagging import LocalChat, TagInput, tag_items

    class Fixed:
        def tag_many(self, batch):
            return [{"subject": ["x"], "style": "s", "movement": "m", "medium": "d", "keywords": []} for _ in batch]

    tagger = load_tagger("tiny:tagger", model_cache)
    entries = [TagInput(str(i), "fox", [("alt_text", f"a red fox {i}")]) for i in range(3)]
    cfg = LabelConfig(tag_batch_size=3)
    chat = LocalChat(tagger, "tiny:tagger", 8, ResponseCache(tmp_path / "llm"))
    tags, stats = tag_items(entries, chat, "local", cfg, Fixed(), 1)
    assert stats.invalid == 1 and stats.retried == 1 and stats.fallback_images == 3  # random model: gibberish
    assert chat.counts() == {"cached": 0, "generated": 2}
    again = LocalChat(tagger, "tiny:tagger", 8, ResponseCache(tmp_path / "llm"))
    assert tag_items(entries, again, "local", cfg, Fixed(), 1)[0] == tags
    assert again.counts() == {"cached": 2, "generated": 0}


def test_the_kohya_file_gets_trigger_and_tag_frequency(tmp_path: Path) -> None:
    import json

    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    from training.export_kohya import dataset_metadata, stamp_metadata

    path = tmp_path / "lora_kohya.safetensors"
    tensors = {"lora_unet_x.lora_down.weight": torch.arange(6.0).reshape(2, 3)}
    save_file(tensors, str(path), metadata={"ss_network_dim": "4"})
    stamp_metadata(path, dataset_metadata("lfstyle", {"a red fox": 3, "snow": 1}, 4, repeats=10,
                                          summary="red foxes in snow"))
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        assert torch.equal(f.get_tensor("lora_unet_x.lora_down.weight"), tensors["lora_unet_x.lora_down.weight"])
    assert meta["ss_network_dim"] == "4"  # what was there stays
    assert json.loads(meta["ss_tag_frequency"]) == {"10_lfstyle": {"lfstyle": 4, "a red fox": 3, "snow": 1}}
    assert json.loads(meta["ss_dataset_dirs"]) == {"10_lfstyle": {"n_repeats": 10, "img_count": 4}}
    assert meta["modelspec.trigger_phrase"] == "lfstyle" and meta["modelspec.description"] == "red foxes in snow"
