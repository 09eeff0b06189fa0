"""The label stage's logic on controlled inputs: licence policy, CLIP re-ranking on planted
embeddings, the trigger word exactly once, token budgets with the real CLIP tokenizer, traits,
tag captions, the exported folder (imagefolder / our trainer / the kohya TOML sd-scripts reads),
the datasheet and the report. Items come straight from the demo site's files (no crawl)."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import numpy as np
import pytest

from datatools.captions import (
    fill,
    fit_human,
    format_caption,
    place_trigger_once,
    segments,
    tokenizer_budget,
    trigger_count,
    word_budget,
)
from lora_factory.catalog import CURATE_DATASET, LABEL_CAPTION_STATS, LABEL_DECISIONS, LABEL_LABELS
from lora_factory.config import LabelConfig
from lora_factory.models.clip_tokenizer import build_clip_tokenizer
from lora_factory.profiles import load_config
from spiders.sources.demo_site import generate_demo_site
from tasks.label.candidates import Candidate, ItemCandidates
from tasks.label.licenses import apply_license_policy, license_allowed, license_family
from tasks.label.rerank import choose, pick, score_candidates
from tasks.label.stage import LabelModels, label_items, run_label
from training.dataset import read_records

from .curate_demo_items import demo_items

LONG = ("a tall red and white striped lighthouse standing on a rocky island at dusk, "
        "waves breaking against the black rocks below while gulls circle the lantern room, "
        "a small keeper's cottage with a slate roof beside it and a winding path down to a wooden jetty, "
        "storm clouds gathering over a deep navy sea on the horizon; a fishing boat with an orange sail "
        "rounds the headland, and far behind it the lights of a harbour town flicker on one by one")


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The demo site's clean images (every licence it has) as curate's dataset."""
    tmp = tmp_path_factory.mktemp("label-demo")
    site = generate_demo_site(tmp / "site", seed=0)
    items, truth = demo_items(site, tmp / "crawl")
    clean = [it for it in items if truth[it["item_id"]]["kind"] == "clean"]
    CURATE_DATASET.write(tmp / "curate", clean)
    return {"tmp": tmp, "crawl": tmp / "crawl", "curate": tmp / "curate", "items": clean}


@pytest.fixture(scope="module")
def clip_tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A pipeline folder holding the real CLIP tokenizer in the diffusers layout."""
    root = tmp_path_factory.mktemp("pipe")
    build_clip_tokenizer().save_pretrained(root / "tokenizer")
    return root


# -- licences --------------------------------------------------------------------------------
def test_licence_policy_matches_families_exact_ids_and_the_unknown_switch() -> None:
    assert license_family("CC-BY-SA-4.0") == "CC-BY-SA" and license_family("CC0-1.0") == "CC0"
    assert license_family("public-domain") == "public-domain"
    default = LabelConfig()
    assert all(license_allowed(x, default) for x in ("CC-BY-4.0", "CC-BY-2.0", "cc-by-sa-3.0", "CC0-1.0", "public-domain"))
    assert not any(license_allowed(x, default) for x in ("CC-BY-NC-4.0", "CC-BY-ND-4.0", "all-rights-reserved",
                                                          "unknown", "", None))
    assert license_allowed("unknown", LabelConfig(allow_unknown_license=True))
    exact = LabelConfig(allowed_licenses=["CC-BY-2.0"])
    assert license_allowed("CC-BY-2.0", exact) and not license_allowed("CC-BY-4.0", exact)
    items = [{"item_id": "a", "license": "all-rights-reserved"}, {"item_id": "b", "license": "CC-BY-4.0"},
             {"item_id": "c", "license": None}]
    result = apply_license_policy(items, "label", default)
    assert [it["item_id"] for it in result.kept] == ["b"]
    assert [(d["item_id"], d["reason"]) for d in result.decisions] == [("a", "license"), ("c", "license")]
    assert "license all-rights-reserved is not allowed" in result.decisions[0]["detail"]
    assert "license unknown is not allowed" in result.decisions[1]["detail"]


def test_an_all_rights_reserved_image_never_reaches_the_dataset(demo: dict) -> None:
    out = demo["tmp"] / "default-policy"
    cfg = load_config("tiny", {"label.allow_unknown_license": False}, environ={})  # the default policy
    assert cfg.label.allowed_licenses == LabelConfig().allowed_licenses
    result = run_label(demo["curate"], demo["crawl"], out, cfg, LabelModels())
    refused = {it["item_id"] for it in demo["items"] if it["license"] == "all-rights-reserved"}
    assert refused
    drops = {d["item_id"]: d for d in LABEL_DECISIONS.read(out).to_pylist() if d["decision"] == "drop"}
    assert refused <= set(drops) and all(drops[i]["reason"] == "license" for i in refused)
    files = {p.name for p in (out / "dataset").iterdir()}
    meta = [json.loads(line) for line in (out / "dataset" / "metadata.jsonl").read_text().splitlines()]
    assert not any(i[:16] in name for i in refused for name in files)
    assert not {m["item_id"] for m in meta} & refused
    assert {m["license"] for m in meta} <= {"CC-BY-4.0", "CC-BY-SA-4.0"}
    assert len(result.labels) == len(demo["items"]) - len(refused)
    sheet = (out / "datasheet.md").read_text()
    assert f"| all-rights-reserved | 0 | {len(refused)} |" in sheet
    assert "Mei Lin" in sheet or "Olu Adeyemi" in sheet  # authors to attribute


# -- re-ranking --------------------------------------------------------------------------------
class PlantedClip:
    """CLIP's two calls on planted vectors: image i -> images[i], text -> texts[text]."""

    def __init__(self, images: list[list[float]], texts: dict[str, list[float]]) -> None:
        self.images = np.asarray(images, np.float32)
        self.texts = texts
        self.seen = 0

    def embed_images(self, images: list, batch_size: int = 32) -> np.ndarray:
        rows = self.images[self.seen : self.seen + len(images)]
        self.seen += len(images)
        return rows

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        return np.asarray([self.texts[t] for t in texts], np.float32)


def test_reranking_picks_the_higher_scoring_candidate_on_controlled_embeddings() -> None:
    ic = ItemCandidates({"item_id": "x"}, [Candidate("alt_text", "a dog"), Candidate("captioner", "a red lighthouse"),
                                           Candidate("vlm", "a purple elephant in a tutu")])
    texts = {"a dog": [1, 0, 0], "a red lighthouse": [0, 1, 0], "a purple elephant in a tutu": [0, 0, 1]}
    score_candidates([ic], np.asarray([[0.5, 0.8, 0.05]]), PlantedClip([], texts).embed_texts)
    winner = pick(ic, margin=0.1)
    assert winner.source == "captioner"  # the text the image is closest to, not the first source
    scores = [c.score for c in ic.candidates]
    assert scores == pytest.approx(np.array([0.5, 0.8, 0.05]) / np.linalg.norm([0.5, 0.8, 0.05]))
    assert [c.hallucination for c in ic.candidates] == [False, False, True]
    assert choose([0.3, 0.3], 0.1) == (0, [False, False])  # a tie: config order decides
    assert choose([0.3], 0.1) == (0, [False])  # one candidate is never "below the others"


def test_label_items_records_every_candidate_score_and_the_winner(demo: dict) -> None:
    items = [it for it in demo["items"] if it["license"] != "all-rights-reserved"][:3]
    alts = [it["alt_text"] for it in items]
    texts = {a: [1.0, 0.0, 0.0] for a in alts} | {"the model's caption": [0.0, 1.0, 0.0]}
    # Image 0 matches the alt text, images 1 and 2 the model caption.
    clip = PlantedClip([[1, 0.2, 0], [0.2, 1, 0], [0, 1, 0]], texts)

    class SameCaption:
        def caption(self, images, max_new_tokens=30, batch_size=8):
            return ["the model's caption"] * len(images)

    asked: list[str] = []

    def tag_chat(messages, schema):  # records what the tagger is shown, answers out of schema
        task = next(m["content"] for m in messages if m["role"] == "user")
        asked.extend([task] if task not in asked else [])
        return "no JSON here"

    cfg = LabelConfig(trigger_word="tok", hallucination_margin=0.5)
    result = label_items(items, demo["crawl"], cfg, LabelModels(captioner=SameCaption(), clip=clip, tag_chat=tag_chat))
    by_id = {lab["item_id"]: lab for lab in result.labels}
    first, second = by_id[items[0]["item_id"]], by_id[items[1]["item_id"]]
    assert first["caption_source"] == "alt_text" and first["caption"] == f"tok, {alts[0]}"
    assert second["caption_source"] == "captioner" and second["caption"] == "tok, the model's caption"
    assert second["caption_score"] == pytest.approx(1 / np.hypot(0.2, 1))
    assert [(c["source"], c["hallucination"]) for c in second["candidates"]] == [("alt_text", True), ("captioner", False)]
    assert result.stats.hallucinations == 3  # image 0's model caption, the alt texts of images 1 and 2
    assert result.stats.sources == {"alt_text": 1, "captioner": 2}
    # The tagger is not shown likely hallucinations: image 0 without the model caption, image 1
    # without its alt text.
    assert alts[0] in asked[0] and "the model's caption" not in asked[0]
    assert "the model's caption" in asked[1] and alts[1] not in asked[1]
    assert [lab["tag_source"] for lab in result.labels] == ["none"] * 3  # out of schema, no fallback configured


# -- trigger word and token budget ---------------------------------------------------------------
@pytest.mark.parametrize("template", ["[trigger], [caption]", "a photo of [trigger], [caption]", "[caption], [trigger] style"])
def test_the_trigger_word_appears_exactly_once_in_every_caption(template: str) -> None:
    budget = word_budget(40)
    bodies = ["a red fox", "lfstyle, a red fox", "a red fox in LFSTYLE style, lfstyle", "", "lfstyle",
              "lfstyles are not the trigger", "a fox, lfstyle, lfstyle, lfstyle and a hen", LONG]
    for body in bodies:
        caption = format_caption(body, "lfstyle", template, "natural", budget).caption
        assert trigger_count(caption, "lfstyle") == 1, (template, body, caption)
        assert budget.count(caption) <= 40
    assert fill("[trigger], [caption]", "lfstyle", "") == "lfstyle"
    assert "lfstyles" in format_caption("lfstyles are not it", "lfstyle", template, "natural", budget).caption
    # A person's caption keeps their placement; a missing or repeated trigger is fixed.
    assert place_trigger_once("a fox drawn in lfstyle", "lfstyle", template) == "a fox drawn in lfstyle"
    assert trigger_count(place_trigger_once("a fox", "lfstyle", template), "lfstyle") == 1
    assert place_trigger_once("lfstyle, a fox, LFStyle again", "lfstyle", template) == "lfstyle, a fox, again"


def test_token_budgets_use_the_real_clip_tokenizer(clip_tokenizer_dir: Path) -> None:
    budget = tokenizer_budget(clip_tokenizer_dir)
    tok = build_clip_tokenizer()
    assert budget.limit == 75  # 77 minus the start and end tokens
    assert budget.count("lfstyle, a lighthouse") == len(tok("lfstyle, a lighthouse")["input_ids"]) - 2
    assert budget.count(LONG) > 75  # the test caption really is over the budget
    natural = format_caption(LONG, "lfstyle", "[trigger], [caption]", "natural", budget)
    assert natural.trimmed and natural.tokens == budget.count(natural.caption) <= 75
    clauses = segments(LONG, "natural")
    kept = natural.caption.removeprefix("lfstyle, ")
    assert any(kept == " ".join(clauses[:k]).rstrip(",;") for k in range(1, len(clauses)))  # a clause boundary
    tags = ", ".join(f"tag number {i} of a long list" for i in range(40))
    tagged = format_caption(tags, "lfstyle", "[trigger], [caption]", "tags", budget)
    assert tagged.trimmed and budget.count(tagged.caption) <= 75
    assert all(t in tags.split(", ") for t in tagged.caption.split(", ")[1:])  # whole tags only
    one_clause = format_caption("word " * 200, "lfstyle", "[trigger], [caption]", "natural", budget)
    assert one_clause.trimmed and budget.count(one_clause.caption) <= 75 and one_clause.caption.startswith("lfstyle, word")
    human = fit_human("a hand-written " + LONG + ", in lfstyle", "lfstyle", "[trigger], [caption]", "natural", budget)
    assert human.tokens <= 75 and trigger_count(human.caption, "lfstyle") == 1


def test_the_longest_text_encoder_sets_the_budget(clip_tokenizer_dir: Path, tmp_path: Path) -> None:
    import shutil

    pipe = tmp_path / "pipe"
    shutil.copytree(clip_tokenizer_dir, pipe)
    build_clip_tokenizer(model_max_length=256).save_pretrained(pipe / "tokenizer_2")  # a longer encoder (as T5's)
    assert tokenizer_budget(pipe).limit == 254
    assert tokenizer_budget(pipe, max_tokens=100).limit == 100
    assert format_caption(LONG, "lfstyle", "[trigger], [caption]", "natural", tokenizer_budget(pipe)).trimmed is False


def test_traits_are_left_out_and_tags_can_be_the_caption(demo: dict) -> None:
    budget = word_budget(75)
    out = format_caption("a red and white striped lighthouse, rocky island", "tok", "[trigger], [caption]",
                         "natural", budget, traits=["red and white striped", "rocky"])
    assert out.caption == "tok, a lighthouse, island"

    def tagger_chat(messages, schema):
        ids = [line.split()[1] for line in messages[-1]["content"].splitlines() if line.startswith("id ")]
        return json.dumps({"images": [{"id": i, "subject": ["lighthouse"], "style": "realistic", "movement": "none",
                                       "medium": "photograph", "keywords": ["sea", "rocks", "tower", "sky", "dusk"]}
                                      for i in ids]})

    items = [it for it in demo["items"] if it["license"] != "all-rights-reserved"][:2]
    cfg = LabelConfig(trigger_word="tok", caption_style="tags", traits=["tower"])
    result = label_items(items, demo["crawl"], cfg, LabelModels(tag_chat=tagger_chat, tag_source="openai"))
    assert [lab["caption"] for lab in result.labels] == ["tok, lighthouse, sea, rocks, sky, dusk, photograph, realistic"] * 2
    assert result.labels[0]["tag_source"] == "openai" and result.labels[0]["keywords"][0] == "sea"
    assert result.stats.tag_fields["medium"] == {"photograph": 2} and result.stats.traits == ["tower"]


# -- exported folder ---------------------------------------------------------------------------
SD_SCRIPTS_GENERAL = {"shuffle_caption", "caption_extension", "keep_tokens", "flip_aug", "color_aug", "num_repeats",
                      "resolution", "batch_size", "enable_bucket", "bucket_no_upscale", "bucket_reso_steps",
                      "min_bucket_reso", "max_bucket_reso", "caption_dropout_rate", "class_tokens"}
SD_SCRIPTS_DATASET = SD_SCRIPTS_GENERAL | {"subsets"}
SD_SCRIPTS_SUBSET = {"image_dir", "num_repeats", "caption_extension", "keep_tokens", "shuffle_caption", "flip_aug",
                     "color_aug", "class_tokens", "is_reg", "caption_dropout_rate", "caption_prefix", "caption_suffix"}


def test_the_exported_folder_loads_as_an_imagefolder_and_in_sd_scripts(demo: dict) -> None:
    out = demo["tmp"] / "export"
    cfg = load_config("tiny", {"train.repeats": 3}, environ={})
    result = run_label(demo["curate"], demo["crawl"], out, cfg, LabelModels())
    dataset = out / "dataset"
    rows = [json.loads(line) for line in (dataset / "metadata.jsonl").read_text().splitlines()]
    # The imagefolder contract: every row names a file in the folder and has the same typed columns.
    assert len(rows) == len(result.labels) > 0
    assert all(set(r) == set(rows[0]) and (dataset / r["file_name"]).is_file() for r in rows)
    assert all(isinstance(r["tags"], list) and isinstance(r["text"], str) for r in rows)
    # Our trainer's reader, and the sidecars sd-scripts reads.
    records = read_records(dataset)
    assert [r.caption for r in records] == [r["text"] for r in rows]
    for r in rows:
        assert (dataset / r["file_name"]).with_suffix(".txt").read_text().strip() == r["text"]
    toml = tomllib.loads((dataset / "kohya_dataset.toml").read_text())
    assert set(toml) == {"general", "datasets"} and set(toml["general"]) <= SD_SCRIPTS_GENERAL
    (ds,) = toml["datasets"]
    assert set(ds) <= SD_SCRIPTS_DATASET and ds["resolution"] == cfg.train.resolution
    (sub,) = ds["subsets"]
    assert set(sub) <= SD_SCRIPTS_SUBSET and sub["num_repeats"] == 3 and sub["keep_tokens"] == 1
    assert sub["caption_extension"] == ".txt" and Path(sub["image_dir"]) == dataset.resolve()
    images = [p for p in Path(sub["image_dir"]).iterdir() if p.suffix != ".txt" and p.suffix in (".png", ".jpg", ".jpeg", ".webp")]
    assert len(images) == len(rows)
    stats = LABEL_CAPTION_STATS.read(out)
    assert stats.num_images == len(rows) and stats.coverage == 1.0 and stats.tokens_max <= stats.token_budget
    assert LABEL_LABELS.read(out).num_rows == len(rows)


# -- feedback samples (the retrain flow's label.feedback_dir) ----------------------------------
def test_feedback_samples_join_the_training_folder_with_their_provenance(demo: dict) -> None:
    import io

    from PIL import Image

    from lora_factory.feedback_samples import FeedbackSample, sample_file_name, write_samples

    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 30, 30)).save(buf, format="PNG")
    png = buf.getvalue()
    sample = FeedbackSample(sample_file_name(png), "a red boat at dawn", "g" * 32, 7, 5, "lfstyle, a boat", "3")
    folder = write_samples(demo["tmp"] / "fb", [(sample, png)])
    out = demo["tmp"] / "with-feedback"
    cfg = load_config("tiny", {"label.feedback_dir": str(folder)}, environ={})
    result = run_label(demo["curate"], demo["crawl"], out, cfg, LabelModels())
    rows = [json.loads(line) for line in (out / "dataset" / "metadata.jsonl").read_text().splitlines()]
    (fb,) = [r for r in rows if r["caption_source"] == "feedback"]
    assert fb["text"] == "lfstyle, a red boat at dawn"  # fitted like a person's caption: trigger once
    assert fb["source_url"] == f"feedback:generation/{'g' * 32}" and fb["license"] == "generated"
    assert (out / "dataset" / fb["file_name"]).read_bytes() == png
    plain = run_label(demo["curate"], demo["crawl"], demo["tmp"] / "without-feedback",
                      load_config("tiny", environ={}), LabelModels())
    assert len(rows) == len(result.labels) == len(plain.labels) + 1  # every crawl image is still there
    assert next(r for r in read_records(out / "dataset") if r.item_id == fb["item_id"]).caption == fb["text"]
    keep = {d["item_id"]: d for d in LABEL_DECISIONS.read(out).to_pylist()}[fb["item_id"]]
    assert keep["decision"] == "keep" and "rated 5" in keep["detail"]
    assert LABEL_CAPTION_STATS.read(out).sources["feedback"] == 1
