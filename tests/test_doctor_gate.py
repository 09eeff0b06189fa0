"""The factory's dataset gate: with ``doctor.enabled`` the label stage writes the doctor's report
on its training folder, and the train stage stops before any step with one line naming the
failed minimum and the report; the minimums are pure decisions on a report."""

from __future__ import annotations

from pathlib import Path

import pytest

from datatools.gate import failed_minimums, for_training, gate_message
from lora_factory.catalog import (
    CRAWL_STATS,
    CURATE_DATASET,
    LABEL_DOCTOR,
    LABEL_DOCTOR_REPORT,
    TRAIN_LORA,
    TUNE_TRAIN_CONFIG,
)
from lora_factory.config import DoctorConfig, FactoryConfig, TrainConfig
from lora_factory.errors import StageError
from lora_factory.profiles import load_config
from lora_factory.runstore import DONE, FAILED
from lora_factory.schemas import DoctorFinding, DoctorImage, DoctorReport
from spiders.sources.demo_site import DemoSite, generate_demo_site

from .chat_server import Reply, serve_chat
from .curate_demo_items import demo_items

NARRATIVE = "Eight clean pictures; the tiny CLIP makes relevance meaningless."


@pytest.fixture(scope="module")
def labelled(tmp_path_factory: pytest.TempPathFactory, model_cache: Path) -> dict:
    """A run whose label stage ran with the doctor (and its narrative, from a loopback chat server)
    on and a relevance minimum tiny CLIP misses."""
    tmp = tmp_path_factory.mktemp("doctor-gate")
    home = tmp / "home"
    home.mkdir()
    (home / "models").symlink_to(model_cache)
    site = generate_demo_site(tmp / "site", seed=0)
    with serve_chat(lambda body, n: Reply(content=NARRATIVE)) as server:
        cfg = load_config("tiny", {"home": str(home), "doctor.enabled": True, "doctor.min_relevance": 9.5,
                                   "label.tagger": "none", "doctor.narrative": True, "label.llm.base_url": server.url,
                                   "label.llm.model": "test-model"}, environ={})
        return _label(cfg, tmp, site) | {"asked": len(server.bodies)}


def _label(cfg: FactoryConfig, tmp: Path, site: DemoSite) -> dict:
    from lora_factory.lifecycle import start_run
    from tasks.label import label_task

    ref = start_run(cfg, ["lighthouse", "sailboat"])
    run = ref.run_dir()
    crawl = Path(run.store.local_path(f"{run.key}/crawl"))
    items, truth = demo_items(site, crawl)
    CRAWL_STATS.write(crawl, {})
    run.set_stage("crawl", DONE)
    CURATE_DATASET.write(Path(run.store.local_path(f"{run.key}/curate")),
                         [it for it in items if truth[it["item_id"]]["kind"] == "clean"][:8])
    run.set_stage("curate", DONE)
    label_task.fn(ref)
    return {"ref": ref, "run": run, "label": run.stage_path("label")}


def test_label_writes_the_doctor_report_on_its_dataset(labelled: dict) -> None:
    report = LABEL_DOCTOR.read(labelled["label"])
    assert isinstance(report, DoctorReport) and report.counts["images"] > 0
    assert report.trigger_word and report.source == "label/dataset"
    assert LABEL_DOCTOR_REPORT.exists(labelled["label"])
    assert report.narrative == NARRATIVE and labelled["asked"] == 1  # doctor.narrative in the stage too
    assert not report.scores_meaningful  # tiny CLIP: said in the report


def test_train_stops_before_any_step_naming_the_minimum_and_the_report(labelled: dict) -> None:
    from tasks.train import train_task

    run = labelled["run"]
    TUNE_TRAIN_CONFIG.write(Path(run.store.local_path(f"{run.key}/tune")), TrainConfig(max_steps=1))
    run.set_stage("tune", DONE)
    with pytest.raises(StageError) as err:
        train_task.fn(labelled["ref"])
    line = str(err.value)
    assert "\n" not in line and line.startswith("dataset doctor: relevance score")
    assert "doctor.min_relevance=9.5" in line and line.endswith("label/doctor.html")
    assert run.stage_status("train") == FAILED
    assert not TRAIN_LORA.at(Path(run.store.local_path(f"{run.key}/train"))).exists()


def test_minimums_are_off_by_default_and_each_is_named(labelled: dict) -> None:
    report = LABEL_DOCTOR.read(labelled["label"])
    assert failed_minimums(report, DoctorConfig()) == []
    assert gate_message(report, DoctorConfig(), "r.html") is None
    n = report.counts["decodable"]
    strict = DoctorConfig(min_images=n + 1, min_quality=10, max_errors=0)
    failed = failed_minimums(report, strict)
    assert failed[0] == f"{n} usable images < doctor.min_images={n + 1}"
    assert any(f.startswith("quality score") for f in failed)
    message = gate_message(report, strict, "r.html")
    assert message is not None and message.endswith("; report: r.html") and "more)" in message


def _sized(report: DoctorReport, sizes: dict[str, tuple[int, int]]) -> DoctorReport:
    """``report`` with controlled images (name -> size) and a stale small_bucket finding, as a
    doctor run with another batch size would have left it."""
    images = [DoctorImage(file=name, sha256=name, ok=True, caption=None, width=w, height=h, cluster=0,
                          x=0.0, y=0.0, relevance=None, flags=["small_bucket"]) for name, (w, h) in sizes.items()]
    stale = DoctorFinding(code="small_bucket", severity="warning", title="stale", count=1, files=["b.png"], fix="x")
    return report.model_copy(update={"images": images, "findings": [*report.findings, stale]})


def test_buckets_are_judged_against_the_tuners_batch_size(labelled: dict) -> None:
    """Three landscape images and one portrait: the portrait's bucket is thin for a batch of 2,
    not for 1, nor for 2 with 2 repeats; centre squares pool all four into one bucket."""
    report = _sized(LABEL_DOCTOR.read(labelled["label"]),
                    {"a.png": (768, 512), "b.png": (770, 520), "c.png": (760, 500), "p.png": (512, 768)})

    def thin(**train: object) -> tuple[list[str], list[str]]:
        judged = for_training(report, TrainConfig(resolution=512, bucket_step=64, **train))
        found = [f for f in judged.findings if f.code == "small_bucket"]
        assert len(found) <= 1
        return (found[0].files if found else [], [im.file for im in judged.images if "small_bucket" in im.flags])

    assert thin(batch_size=2) == (["p.png"], ["p.png"])
    assert thin(batch_size=1) == ([], [])  # the stale finding and flags are gone
    assert thin(batch_size=2, repeats=2) == ([], [])
    assert thin(batch_size=4, aspect_buckets=False) == ([], [])
    files, _ = thin(batch_size=5, aspect_buckets=False)
    assert sorted(files) == ["a.png", "b.png", "c.png", "p.png"]
    judged = for_training(report, TrainConfig(resolution=512, bucket_step=64, batch_size=3))
    assert "batch size 3" in next(f.title for f in judged.findings if f.code == "small_bucket")


def test_label_leaves_buckets_to_train_which_warns_with_the_tuners_batch(labelled: dict, caplog) -> None:
    """The profile (tiny) says batch 2; label's report has no bucket finding; train's gate, given a
    tuner batch larger than the dataset, names every image's bucket and the tuner's number."""
    from tasks.train import train_task

    report = LABEL_DOCTOR.read(labelled["label"])
    assert not any(f.code == "small_bucket" for f in report.findings)
    run = labelled["run"]
    big = report.counts["decodable"] + 1
    TUNE_TRAIN_CONFIG.write(Path(run.store.local_path(f"{run.key}/tune")), TrainConfig(max_steps=1, batch_size=big))
    run.set_stage("tune", DONE)
    with caplog.at_level("WARNING"), pytest.raises(StageError):  # the relevance minimum still stops it
        train_task.fn(labelled["ref"])
    warned = [r.getMessage() for r in caplog.records if "aspect buckets" in r.getMessage()]
    assert warned and f"batch size {big} (tune/train_config.yaml)" in warned[0]
