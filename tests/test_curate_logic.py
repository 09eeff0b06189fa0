"""Curate filters as pure functions on controlled inputs: dedup, alignment, quality, text, balance."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

from datatools.dedup import embedding_pairs, representatives, resolve_chains
from datatools.features import extract_features
from datatools.image_dedup import hash_near_duplicates
from lora_factory.config import CurateConfig
from lora_factory.errors import StageError
from lora_factory.manifest import item_id_for, read_decisions, write_items
from tasks._text import clean_text
from tasks.curate import CurateModels, curate_items, load_embeddings, run_curate
from tasks.curate.alignment import clip_checks, text_topic_check
from tasks.curate.balance import composition_cap, source_cap
from tasks.curate.semantic import semantic_dedup
from tasks.curate.stats import mean_pairwise_cosine_distance, spectrum_stats
from tasks.curate.text import detect_languages, is_ad_text

# ---------------------------------------------------------------- dedup core


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _planted(n: int, d: int, n_dup: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    e = _unit(rng.standard_normal((n, d)))
    src = rng.choice(n // 2, n_dup, replace=False)
    dst = n // 2 + rng.choice(n - n // 2, n_dup, replace=False)
    e[dst] = _unit(e[src] + 0.02 * rng.standard_normal((n_dup, d)) / np.sqrt(d))
    return e, src, dst


def test_best_ranked_copy_wins_and_chains_resolve() -> None:
    e = _unit(np.array([[1, 0, 0], [0.999, 0.04, 0], [0.998, 0.06, 0], [0, 1, 0]], float))
    rank = np.array([2, 0, 1, 3])  # item 1 is the best copy of the 0/1/2 group
    dup_of, score, method = semantic_dedup(e, rank, 0.99)
    assert method == "exact"
    assert dup_of.tolist() == [1, -1, 1, -1]
    assert np.isnan(score[1]) and score[0] >= 0.99
    assert resolve_chains(np.array([-1, 0, 1, 2])).tolist() == [-1, 0, 0, 0]


def test_pair_check_vetoes_text_duplicates_of_different_pictures() -> None:
    e = _unit(np.array([[1, 0], [1, 0], [1, 0]], float))
    rank = np.arange(3)
    dup_of, _, _ = semantic_dedup(e, rank, 0.95, pair_check=lambda i, j: (i != 2) & (j != 2))
    assert dup_of.tolist() == [-1, 0, -1]


def test_cluster_then_compare_finds_the_planted_duplicates() -> None:
    e, src, dst = _planted(6000, 64, 60)
    rank = np.arange(len(e))
    exact, m1 = embedding_pairs(e, rank, 0.95)
    clustered, m2 = embedding_pairs(e, rank, 0.95, exact_max_items=1000, items_per_cluster=300)
    assert m1 == "exact" and m2.startswith("semdedup")
    d_exact, _ = representatives((np.r_[exact[0], exact[1]], np.r_[exact[1], exact[0]], np.r_[exact[2], exact[2]]),
                                 rank, len(e))
    assert sorted(np.flatnonzero(d_exact >= 0)) == sorted(dst)
    assert (d_exact[dst] == src).all()
    found = set(clustered[0].tolist()) | set(clustered[1].tolist())
    recall = len(found & set(dst.tolist())) / len(dst)
    assert recall >= 0.85  # pairs split across k-means buckets are the price of the fast path
    assert set(clustered[0].tolist()) <= set(exact[0].tolist()) | set(exact[1].tolist())  # no false pairs


def test_hash_near_duplicates_need_matching_proportions() -> None:
    ph = np.array([[0] * 8, [1] + [0] * 7, [3] + [0] * 7, [255] * 8], np.uint8)
    dh = np.zeros((4, 8), np.uint8)
    log_aspect = np.log(np.array([1.0, 1.02, 1.6, 1.0]))
    dup_of, dist = hash_near_duplicates(ph, dh, log_aspect, np.arange(4), max_phash=4, max_dhash=4,
                                        max_aspect_change=0.1)
    assert dup_of.tolist() == [-1, 0, -1, -1]  # item 2: same hash, other proportions
    assert dist[1] == 1


# ---------------------------------------------------------------- CLIP alignment on controlled embeddings


def test_clip_alignment_decisions() -> None:
    img = _unit(np.array([[1, 0, 0], [1, 0, 0], [0, 0, 1], [1, 0, 0]], float))
    txt = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [0, 0, 0]], np.float32)  # last: no text
    topics = _unit(np.array([[1, 0.2, 0], [0.1, 1, 0]], float))  # the run's topics: not axis 3
    checks, scores = clip_checks(img, txt, topics, {"image_text": 0.28, "image_topic": 0.5}, "m")
    (topic, align) = checks
    assert topic.reason == "off_topic" and topic.drop.tolist() == [False, False, True, False]
    assert align.reason == "low_alignment" and align.drop.tolist() == [False, True, False, False]
    assert np.isnan(scores["clip_image_text"][3])  # no text is not misalignment
    assert scores["clip_image_topic"][0] == pytest.approx(float(img[0] @ topics[0]))
    off, _ = clip_checks(img, txt, topics, {"image_text": None, "image_topic": None}, "m")
    assert off == []
    check, s = text_topic_check(txt, topics, 0.5)
    assert check.drop.tolist() == [False, False, True, False] and np.isnan(s[3])


class _FakeClip:
    """A CLIP stand-in whose image vector is the mean colour and whose text vector is the colour
    word in the text: alignment is known exactly."""

    dim = 3
    device = "cpu"
    WORDS = {"red": [1, 0, 0], "green": [0, 1, 0], "blue": [0, 0, 1]}

    def __init__(self) -> None:
        import torch

        class Model:
            def encode_image(self, batch: torch.Tensor) -> torch.Tensor:
                return batch

        self.model = Model()

    @staticmethod
    def preprocess(img: Image.Image):  # noqa: ANN205
        import torch

        return torch.tensor(np.asarray(img.convert("RGB"), np.float32).mean(axis=(0, 1)))

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        rows = [next((v for w, v in self.WORDS.items() if w in t), [0.3, 0.3, 0.3]) for t in texts]
        return _unit(np.array(rows, float) + 1e-6)


def _textured(colour: tuple[int, int, int], seed: int, size: tuple[int, int] = (96, 96)) -> Image.Image:
    rng = np.random.default_rng(seed)
    w, h = size
    blocks = rng.integers(-25, 25, size=(h // 8 + 1, w // 8 + 1, 1))
    noise = np.kron(blocks, np.ones((8, 8, 1)))[:h, :w]
    return Image.fromarray(np.clip(np.array(colour) + noise, 0, 255).astype("uint8"))


def _write(crawl: Path, images: list[tuple[Image.Image, dict]], fmt: str = "PNG") -> list[dict]:
    (crawl / "images").mkdir(parents=True, exist_ok=True)
    items = []
    for n, (img, extra) in enumerate(images):
        buf = io.BytesIO()
        img.save(buf, fmt, **extra.pop("save", {}))
        data = buf.getvalue()
        iid = item_id_for(data)
        (crawl / "images" / f"{iid}.png").write_bytes(data)
        items.append({"item_id": iid, "image_path": f"images/{iid}.png", "image_url": f"http://a/{n}.png",
                      "page_url": extra.pop("page_url", "http://a/p"), "license": "CC-BY-4.0",
                      "crawl_time": datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=n),
                      "width": img.width, "height": img.height, "num_bytes": len(data),
                      "mime_type": "image/png", **extra})
    write_items(crawl / "items.parquet", items)
    return items


def test_clip_thresholds_are_per_model_through_the_stage(tmp_path: Path) -> None:
    items = _write(tmp_path, [
        (_textured((220, 40, 40), 0), {"alt_text": "a red kite over the field", "topic": "red"}),
        (_textured((40, 200, 40), 1), {"alt_text": "a red kite over the field", "topic": "red"}),  # misaligned
        (_textured((40, 40, 220), 2), {"alt_text": "", "topic": "green"}),  # not any topic's colour
        (_textured((40, 210, 40), 3), {"alt_text": "a green kite over the field", "topic": "green"}),
    ])
    base = {"text_dedup_threshold": None, "topic_prompt": "{topic}", "languages": None}
    cfg = CurateConfig(**base, clip_thresholds={"fake:clip": {"image_text": 0.9, "image_topic": 0.9}})
    result = curate_items(items, tmp_path, cfg, CurateModels(clip=_FakeClip(), clip_ref="fake:clip"))
    by = {d["item_id"]: d for d in result.decisions}
    assert [by[it["item_id"]]["reason"] for it in items] == [None, "low_alignment", "off_topic", None]
    assert by[items[1]["item_id"]]["score"] < 0.9 and "fake:clip" in by[items[1]["item_id"]]["detail"]
    # Another model (no entry): the same cosines decide nothing, and the run says why.
    result = curate_items(items, tmp_path, cfg, CurateModels(clip=_FakeClip(), clip_ref="other:clip"))
    assert len(result.kept) == 4
    assert any("no curate.clip_thresholds entry for 'other:clip'" in n for n in result.notes)
    assert "clip_image" in result.embeddings and result.stats["estimated_domain"]["domain"]


# ---------------------------------------------------------------- technical quality, EXIF, text


def test_quality_filters_on_synthetic_pictures(tmp_path: Path) -> None:
    sharp = _textured((120, 110, 100), 0, (128, 128))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    items = _write(tmp_path, [
        (sharp, {"alt_text": "ok"}),
        (sharp.filter(ImageFilter.GaussianBlur(6)), {"alt_text": "blurred"}),
        (_textured((6, 6, 6), 1, (128, 128)).point(lambda v: min(v, 12)), {"alt_text": "dark"}),
        (_textured((250, 250, 250), 2, (128, 128)).point(lambda v: max(v, 246)), {"alt_text": "blown out"}),
        (Image.new("RGB", (128, 128), (90, 120, 150)), {"alt_text": "flat"}),
        (_textured((120, 110, 100), 4, (400, 100)), {"alt_text": "banner"}),
        (_textured((120, 110, 100), 5, (160, 96)), {"alt_text": "rotated", "save": {"exif": exif}}),
    ])
    cfg = CurateConfig(text_dedup_threshold=None, languages=None, phash_max_distance=None)
    result = curate_items(items, tmp_path, cfg)
    reasons = [{d["item_id"]: d["reason"] for d in result.decisions}[it["item_id"]] for it in items]
    assert reasons == [None, "blurry", "too_dark", "overexposed", "low_information", "bad_aspect", None]
    rotated = next(k for k in result.kept if k["alt_text"] == "rotated")
    assert (rotated["width"], rotated["height"], rotated["exif_rotated"]) == (96, 160, True)
    f = extract_features([tmp_path / items[1]["image_path"], tmp_path / items[0]["image_path"]])
    assert f.laplacian_var[0] < 20 < f.laplacian_var[1]


def test_text_cleaning_ads_and_language() -> None:
    assert clean_text("IMG_1234.jpg") == "" and clean_text("DSC0042") == ""
    assert clean_text("  A\u00a0red   fox \u2014 click to enlarge ") == "A red fox \u2014"
    assert is_ad_text("Advertisement") and is_ad_text(" sponsored ") and not is_ad_text("a sale boat")
    langs, probs = detect_languages(["the keeper climbed the spiral stairs every evening",
                                     "der Leuchtturm steht auf einem Felsen im Meer", "red boat"], 4)
    assert langs[:2] == ["en", "de"] and langs[2] is None and np.isnan(probs[2])


def test_wrong_language_and_ads_are_dropped_with_reasons(tmp_path: Path) -> None:
    items = _write(tmp_path, [
        (_textured((120, 110, 100), 0), {"alt_text": "the lighthouse stands on a rock by the sea"}),
        (_textured((100, 110, 120), 1), {"alt_text": "der Leuchtturm steht auf einem Felsen am Meer"}),
        (_textured((110, 120, 100), 2), {"alt_text": "Sponsored", "title_text": "a lighthouse"}),
    ])
    result = curate_items(items, tmp_path, CurateConfig(text_dedup_threshold=None))
    by = {d["item_id"]: d for d in result.decisions}
    assert by[items[1]["item_id"]]["reason"] == "wrong_language" and by[items[1]["item_id"]]["score"] > 0.9
    assert by[items[2]["item_id"]]["reason"] == "ad"
    assert result.kept[0]["caption_text"] == "the lighthouse stands on a rock by the sea"


# ---------------------------------------------------------------- balance and statistics


def test_composition_and_source_caps_keep_the_best_ranked() -> None:
    ph = np.array([[0] * 8, [1] + [0] * 7, [3] + [0] * 7, [255] * 8], np.uint8)
    drop, size = composition_cap(ph, np.array([3, 0, 1, 2]), cap=2, max_distance=4)
    assert drop.tolist() == [True, False, False, False] and size.tolist() == [3, 3, 3, 1]
    drop, share = source_cap(["a", "a", "a", "b"], np.array([0, 1, 2, 3]), max_share=0.5)
    assert drop.tolist() == [False, False, True, False] and share[0] == 0.75
    drop, _ = source_cap(["a", "a", "a"], np.arange(3), max_share=0.5)
    assert not drop.any()  # one source: nothing to balance against


def test_diversity_statistics_match_brute_force() -> None:
    rng = np.random.default_rng(0)
    e = _unit(rng.standard_normal((50, 8)))
    sims = e @ e.T
    brute = 1 - (sims.sum() - np.trace(sims)) / (50 * 49)
    assert mean_pairwise_cosine_distance(e) == pytest.approx(brute, abs=1e-6)
    spec = spectrum_stats(e)
    assert 5 < spec["effective_rank"] <= 8 and 0.7 < spec["pca_entropy"] <= 1.0
    line = spectrum_stats(_unit(np.repeat([[1.0, 0.0]], 10, axis=0) + rng.normal(0, [0, 1e-3], (10, 2))))
    assert line["effective_rank"] == pytest.approx(1.0, abs=0.05)


# ---------------------------------------------------------------- outputs and the empty-result error


def test_outputs_and_the_error_naming_the_filter(tmp_path: Path) -> None:
    crawl = tmp_path / "crawl"
    items = _write(crawl, [(_textured((120, 110, 100), k), {"alt_text": f"picture number {k} of a boat"})
                           for k in range(3)])
    out = tmp_path / "out"
    out.mkdir()
    encode = lambda texts: _unit(np.array([[len(t), 1.0, t.count("1")] for t in texts], float))  # noqa: E731
    result = run_curate(crawl, CurateConfig(languages=None), out, CurateModels(text_encode=encode, text_ref="fake"))
    assert len(result.kept) == 3
    assert len(read_decisions(out / "decisions.parquet")) == 3
    ids, emb = load_embeddings(out, "text_minilm")
    assert ids == [it["item_id"] for it in items] and emb.shape == (3, 3)
    with pytest.raises(StageError, match=r"'blurry' removed 3 of 3 \(filter curate.min_sharpness\)"):
        run_curate(crawl, CurateConfig(min_sharpness=1e9), tmp_path / "out2")
