"""Curate on the demo site's planted defects: each is caught by the right filter, clean images are
kept (precision and recall per filter), and the stage writes everything later stages and the
user need. Items come straight from the generator's files (no crawl), models from the tiny
profile (real MiniLM, tiny random CLIP whose thresholds the profile turns off)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from lora_factory.manifest import DECISION_SCHEMA
from lora_factory.profiles import load_config
from lora_factory.schemas import DATASET_SCHEMA
from spiders.sources.demo_site import generate_demo_site
from tasks.curate import load_embeddings, run_curate
from tasks.curate.task import load_models
from tasks.label import run_label

from .curate_demo_items import demo_items

# Which reasons are the right catch for each planted kind (ads: the banner size, or the text).
EXPECTED = {
    "tiny": {"too_small"},
    "blurry": {"blurry"},
    "corrupt": {"corrupt"},
    "off_topic": {"off_topic"},
    "ad": {"too_small", "bad_aspect", "ad"},
    "exact_dup": {"exact_duplicate"},
    "near_dup": {"near_duplicate"},
}


@pytest.fixture(scope="module")
def curated(tmp_path_factory: pytest.TempPathFactory, model_cache: Path) -> dict:
    tmp = tmp_path_factory.mktemp("curate-demo")
    site = generate_demo_site(tmp / "site", seed=0)
    crawl = tmp / "crawl"
    items, truth = demo_items(site, crawl)
    cfg = load_config("tiny", {}, environ={})
    out = tmp / "curate"
    out.mkdir()
    result = run_curate(crawl, cfg.curate, out, load_models(cfg.models, model_cache), seed=cfg.seed)
    return {"result": result, "truth": truth, "items": items, "out": out, "crawl": crawl, "tmp": tmp}


def _planted_pair_partner(item_id: str, truth: dict, by_path: dict) -> str | None:
    """For a planted copy (or its original), the item id of the other member of the pair."""
    t = truth[item_id]
    if t["dup_of"] in by_path:
        return by_path[t["dup_of"]]
    return None


def test_each_planted_defect_is_caught_by_the_right_filter(curated: dict) -> None:
    result, truth = curated["result"], curated["truth"]
    by_path = {t["path"]: iid for iid, t in truth.items()}
    copies_of = {}  # original item id -> its planted copies
    for iid, t in truth.items():
        if t["kind"] in ("exact_dup", "near_dup") and t["dup_of"] in by_path:
            copies_of.setdefault(by_path[t["dup_of"]], set()).add(iid)
    dec = {d["item_id"]: d for d in result.decisions}
    caught: Counter[str] = Counter()
    for iid, t in truth.items():
        kind, d = t["kind"], dec[iid]
        if kind in ("exact_dup", "near_dup"):
            # The pair collapses to one: either this copy goes, pointing at its original, or the
            # original goes pointing at it (a lossless copy of identical pixels may rank higher).
            original = _planted_pair_partner(iid, truth, by_path)
            od = dec[original]
            pair_ok = ((d["reason"] in EXPECTED[kind] and d["dup_of"] == original and od["decision"] == "keep")
                       or (od["reason"] in EXPECTED[kind] and od["dup_of"] == iid and d["decision"] == "keep"))
            caught[kind] += pair_ok
        elif kind in EXPECTED:
            caught[kind] += d["reason"] in EXPECTED[kind]
    planted = Counter(t["kind"] for t in truth.values() if t["kind"] in EXPECTED)
    recall = {k: caught[k] / planted[k] for k in planted}
    assert recall == {k: 1.0 for k in planted}, recall

    # Precision per filter: everything a reason dropped was planted for it (or, for duplicate
    # reasons, is one side of a planted pair).
    for reason in {d["reason"] for d in result.dropped}:
        dropped = [d for d in result.dropped if d["reason"] == reason]
        right = 0
        for d in dropped:
            kind = truth[d["item_id"]]["kind"]
            if reason in EXPECTED.get(kind, set()):
                right += 1
            elif kind == "clean" and d["item_id"] in copies_of and d["dup_of"] in copies_of[d["item_id"]]:
                right += reason == ("exact_duplicate" if truth[d["dup_of"]]["kind"] == "exact_dup" else "near_duplicate")
        assert right / len(dropped) == 1.0, (reason, [truth[d["item_id"]]["path"] for d in dropped])


def test_clean_images_are_kept(curated: dict) -> None:
    result, truth = curated["result"], curated["truth"]
    dec = {d["item_id"]: d for d in result.decisions}
    clean = [iid for iid, t in truth.items() if t["kind"] == "clean"]
    lost = [truth[i]["path"] for i in clean if dec[i]["decision"] == "drop"
            and not (dec[i]["reason"] == "exact_duplicate" and truth[dec[i]["dup_of"]]["kind"] == "exact_dup")]
    assert not lost, lost
    kept = sum(dec[i]["decision"] == "keep" for i in clean)
    assert kept / len(clean) >= 0.9


def test_every_drop_has_reason_score_and_sentence(curated: dict) -> None:
    result = curated["result"]
    assert len(result.decisions) == len(curated["items"])
    for d in result.dropped:
        assert d["reason"] and d["detail"]
        assert d["score"] is not None or d["reason"] == "corrupt"
        if d["reason"].endswith("duplicate"):
            assert d["dup_of"] in {k["item_id"] for k in result.kept}  # chains end at a kept image


def test_outputs_for_later_stages_and_the_user(curated: dict) -> None:
    out, result = curated["out"], curated["result"]
    dataset = pq.read_table(out / "dataset.parquet")
    assert dataset.schema.names == DATASET_SCHEMA.names and dataset.num_rows == len(result.kept)
    rows = dataset.to_pylist()
    assert all(r["sharpness"] > 20 and r["phash"] and r["quality_rank"] >= 0 for r in rows)
    assert sum(r["text_topic"] is not None for r in rows) >= len(rows) - 1  # one planted image has no alt
    decisions = pq.read_table(out / "decisions.parquet")
    assert decisions.schema.names == DECISION_SCHEMA.names and decisions.num_rows == len(curated["items"])
    rejected = pq.read_table(out / "rejected.parquet").to_pylist()
    assert {r["reason"] for r in rejected} >= {"too_small", "blurry", "near_duplicate", "exact_duplicate",
                                                "off_topic", "corrupt"}
    for name, dim in (("clip_image", 32), ("text_minilm", 384)):
        ids, emb = load_embeddings(out, name)
        assert emb.shape == (len(ids), dim) and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-4)
    kept_ids = [r["item_id"] for r in rows]
    ids, _ = load_embeddings(out, "clip_image")
    assert set(kept_ids) <= set(ids)
    stats = json.loads((out / "stats.json").read_text())
    assert stats["num_images"] == len(rows) and stats["num_candidates"] == len(curated["items"])
    assert 0 < stats["text_diversity"]["mean_pairwise_distance"] < 1
    assert stats["text_diversity"]["effective_rank"] > 1 and stats["visual_variance"] > 0
    assert sum(stats["aspect_histogram"].values()) == len(rows)
    assert stats["estimated_domain"]["domain"] in {"photo", "art", "anime", "illustration", "3d", "sketch",
                                                   "screenshot"}
    assert stats["caption_coverage"] > 0.9
    report = (out / "report.html").read_text()
    assert report.count("data:image/png;base64,") > len(rows)
    assert "Dropped: near_duplicate" in report and "class=dup" in report and "CLIP image-text cosine" in report
    assert "variance of Laplacian" in report  # per-item sentences and the sharpness histogram


def test_label_reads_the_curated_dataset(curated: dict) -> None:
    label = curated["tmp"] / "label"
    cfg = load_config("tiny", {"label.trigger_word": "tok"}, environ={})
    result = run_label(curated["out"], curated["crawl"], label, cfg)
    kept = curated["result"].kept
    refused = [it for it in kept if it["license"] == "all-rights-reserved"]
    assert refused and len(result.labels) == len(kept) - len(refused)
    assert {d["item_id"] for d in result.dropped} == {it["item_id"] for it in refused}
