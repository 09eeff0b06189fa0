"""The whole factory through the real CLI: Prefect flow, Scrapy on loopback, tiny models, MLflow.

One run is made to fail at curation (a bad setting), then resumed with the setting fixed: the
crawl is not repeated, every stage's outputs exist, MLflow has a parent run with seven nested
runs, and the adapter is registered and loads in diffusers.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

import pyarrow.parquet as pq
import pytest

CLI = Path(sys.executable).parent / "lora-factory"
STAGES = ("crawl", "curate", "label", "tune", "train", "evaluate", "deploy")

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(3600)]  # a bound for a hung run, not a speed test: whole runs take 5x longer on a loaded machine


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(CLI), *args], cwd=cwd, capture_output=True, text=True, timeout=2400)


@pytest.fixture(scope="module")
def factory_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("e2e")
    home = tmp / "home"
    failed = run_cli("run", "-t", "lighthouse,sailboat", "--home", str(home),
                     "--set", "curate.min_side=100000", cwd=tmp)
    assert (home / "runs").is_dir(), failed.stderr[-3000:]
    runs = sorted((home / "runs").iterdir())
    assert len(runs) == 1
    run_dir = runs[0]
    state_after_failure = json.loads((run_dir / "run.json").read_text())
    resumed = run_cli("run", "--resume", run_dir.name, "--home", str(home),
                      "--set", "curate.min_side=64", cwd=tmp)
    return {"home": home, "tmp": tmp, "run_dir": run_dir, "failed": failed,
            "state_after_failure": state_after_failure, "resumed": resumed}


def test_a_failing_stage_stops_the_run_with_one_line_and_keeps_earlier_work(factory_run: dict) -> None:
    failed = factory_run["failed"]
    assert failed.returncode == 2
    errors = [line for line in failed.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1
    assert "no images left after curation: 'too_small' removed" in errors[0]
    state = factory_run["state_after_failure"]
    assert state["stages"]["crawl"]["status"] == "done"
    assert state["stages"]["curate"]["status"] == "failed"
    assert "too_small" in state["stages"]["curate"]["error"]
    assert all(state["stages"][s]["status"] == "pending" for s in STAGES[2:])


def test_resume_finishes_without_recrawling(factory_run: dict) -> None:
    resumed = factory_run["resumed"]
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "LoRA Factory run finished." in resumed.stdout
    state = json.loads((factory_run["run_dir"] / "run.json").read_text())
    assert state["status"] == "done"
    assert all(state["stages"][s]["status"] == "done" for s in STAGES)
    crawl_history = [h["status"] for h in state["stages"]["crawl"]["history"]]
    assert crawl_history == ["running", "done"]  # the crawl ran once
    assert state["config"]["curate"]["min_side"] == 64
    assert state["resumes"][0]["overrides"]["curate.min_side"] == 64
    assert state["stages"]["crawl"]["cache"]["decision"] == "hit"
    assert state["stages"]["curate"]["cache"]["decision"] == "miss"
    assert state["stages"]["curate"]["cache"]["reason"].startswith("was failed")


def test_every_stage_wrote_its_outputs(factory_run: dict) -> None:
    run_dir = factory_run["run_dir"]
    for rel in [
        "run.json", "manifest.parquet",
        "crawl/items.parquet", "crawl/pages.parquet", "crawl/crawl_stats.json",
        "curate/dataset.parquet", "curate/rejected.parquet", "curate/report.html",
        "label/labels.parquet", "label/dataset/metadata.jsonl", "label/dataset/kohya_dataset.toml",
        "label/captions.csv", "label/report.html", "label/datasheet.md", "label/caption_stats.json",
        "tune/train_config.yaml", "tune/rationale.md",
        "train/lora/pytorch_lora_weights.safetensors",
        "evaluate/eval.json", "evaluate/grid.png", "evaluate/report.html", "evaluate/README.md",
        "deploy/decision.json", "deploy/report.html",
    ]:
        assert (run_dir / rel).is_file(), rel
    assert not (run_dir / ".staging").exists()
    images = list((run_dir / "crawl" / "images").iterdir())
    assert len(images) > 20
    meta = (run_dir / "label" / "dataset" / "metadata.jsonl").read_text().splitlines()
    assert meta and all(json.loads(m)["text"].startswith("lfstyle, ") for m in meta)
    ev = json.loads((run_dir / "evaluate" / "eval.json").read_text())
    kinds = {p["kind"] for p in ev["prompts"]}
    assert {"concept", "generalisation", "leakage"} <= kinds
    assert len(ev["samples"]) == 2 * len(ev["prompts"]) * len(ev["seeds"]) > 0
    assert any(f["code"] == "random_scorer" for f in ev["findings"])
    assert set(ev["efficiency"]["modes"]) == {"base", "lora", "fused"} and "dino" in ev["fidelity_gains"]
    decision = json.loads((run_dir / "deploy" / "decision.json").read_text())
    assert f"version <b>{decision['version']}</b>" in (run_dir / "deploy" / "report.html").read_text()
    card = (run_dir / "evaluate" / "README.md").read_text()
    assert "Not evaluated yet" not in card and "overall_score" in card


def test_planted_defects_are_explained(factory_run: dict) -> None:
    """Every planted tiny, blurry, off-topic image and exact or near duplicate the crawl kept is
    dropped by curate with the right reason, and `lora-factory explain` says so."""
    from spiders.sources.demo_site import generate_demo_site

    truth = generate_demo_site(factory_run["tmp"] / "site", seed=0).ground_truth
    manifest = pq.read_table(factory_run["run_dir"] / "manifest.parquet").to_pylist()
    kinds = {}
    by_path = {}
    for row in manifest:
        path = urlparse(row["image_url"]).path
        kinds[row["item_id"]] = (truth[path]["kind"], row)
        by_path[path] = row
    tiny = [r for k, r in kinds.values() if k == "tiny"]
    assert tiny and all(r["curate_reason"] == "too_small" for r in tiny)
    # Each planted exact duplicate whose original was crawled too: one of the pair is kept and
    # the other dropped as its exact_duplicate (the better-ranked one wins: licence, size,
    # encoding, sharpness, then the item id).
    # (Pairs of a topic the run did not ask for are dropped earlier, as off_topic: see below.)
    run_topics = {"lighthouse", "sailboat"}
    pairs = [(r, by_path[truth[p]["dup_of"]]) for p, r in by_path.items()
             if truth[p]["kind"] == "exact_dup" and truth[p]["dup_of"] in by_path
             and truth[p]["topic"] in run_topics]
    assert pairs
    for copy, original in pairs:
        kept, dropped = (copy, original) if copy["curate_decision"] == "keep" else (original, copy)
        assert kept["curate_decision"] == "keep"
        assert dropped["curate_reason"] == "exact_duplicate"
        assert dropped["curate_dup_of"] == kept["item_id"]
    # Planted blurry images are dropped as blurry; each planted near copy whose original was
    # crawled collapses with it into one kept image (the better-ranked one).
    blurry = [r for k, r in kinds.values() if k == "blurry"]
    assert blurry and all(r["curate_reason"] == "blurry" for r in blurry)
    near = [(r, by_path[truth[p]["dup_of"]]) for p, r in by_path.items()
            if truth[p]["kind"] == "near_dup" and truth[p]["dup_of"] in by_path
            and truth[p]["topic"] in run_topics]
    assert near
    for copy, original in near:
        kept, dropped = (copy, original) if copy["curate_decision"] == "keep" else (original, copy)
        assert kept["curate_decision"] == "keep"
        assert dropped["curate_reason"] == "near_duplicate" and dropped["curate_dup_of"] == kept["item_id"]
    # Clean images of the run's topics are kept, except an original that lost to its planted
    # identical copy; clean images of a topic the run did not ask for (reached through the site's
    # links) are off_topic.
    clean = [r for k, r in kinds.values() if k == "clean"]
    on_topic = [r for r in clean if truth[urlparse(r["image_url"]).path]["topic"] in run_topics]
    assert on_topic and all(r["curate_decision"] == "keep" or r["curate_reason"] == "exact_duplicate"
                            for r in on_topic)
    assert all(r["curate_reason"] == "off_topic" for r in clean if r not in on_topic)
    # Everything of another topic (or none: recipes, the logo) is dropped: off_topic, or an
    # earlier filter (too small, blurry, ad) when it was planted junk as well.
    elsewhere = [(k, r) for k, r in kinds.values()
                 if truth[urlparse(r["image_url"]).path]["topic"] not in run_topics and k != "corrupt"]
    assert elsewhere and all(r["curate_decision"] == "drop" for _, r in elsewhere)
    assert all(r["curate_reason"] == "off_topic" for k, r in elsewhere if k in ("clean", "off_topic"))

    proc = run_cli("explain", factory_run["run_dir"].name, tiny[0]["image_url"],
                   "--home", str(factory_run["home"]), cwd=factory_run["tmp"])
    assert proc.returncode == 0, proc.stderr
    assert "dropped by curate, reason too_small" in proc.stdout


def test_mlflow_parent_with_seven_nested_runs_and_registered_version(factory_run: dict) -> None:
    from mlflow.tracking import MlflowClient

    state = json.loads((factory_run["run_dir"] / "run.json").read_text())
    uri = state["mlflow_tracking_uri"]
    client = MlflowClient(uri, registry_uri=uri)
    parent = client.get_run(state["mlflow_parent_run_id"])
    assert parent.info.status == "FINISHED"
    children = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}' and attributes.status = 'FINISHED'",
    )
    assert sorted(c.info.run_name for c in children) == sorted(STAGES)
    train = next(c for c in children if c.info.run_name == "train")
    losses = client.get_metric_history(train.info.run_id, "loss")
    assert [m.step for m in losses] == list(range(1, len(losses) + 1)) and len(losses) == 20
    decision = json.loads((factory_run["run_dir"] / "deploy" / "decision.json").read_text())
    mv = client.get_model_version(decision["registered_model"], decision["version"])
    assert mv.run_id == next(c for c in children if c.info.run_name == "deploy").info.run_id
    assert client.get_model_version_by_alias(decision["registered_model"], "candidate").version == mv.version
    evaluate = next(c for c in children if c.info.run_name == "evaluate")
    assert {"latency_p95_s_base", "latency_p95_s_lora", "latency_p95_s_fused"} <= set(evaluate.data.metrics)


def test_the_lora_loads_in_diffusers(factory_run: dict) -> None:
    import torch

    from lora_factory.models import load_pipeline

    pipe = load_pipeline("tiny:sd", "sd15", factory_run["home"] / "models")
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    text = torch.randn(1, 77, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        before = pipe.unet(latents, 10, encoder_hidden_states=text).sample
        pipe.load_lora_weights(factory_run["run_dir"] / "train" / "lora")
        after = pipe.unet(latents, 10, encoder_hidden_states=text).sample
    assert not torch.allclose(before, after)


def test_explain_answers_for_crawl_refusals_pages_and_trained_images(factory_run: dict) -> None:
    """Images the crawl refused have no item id, yet `explain` names their reason; a page URL
    shows what became of the page; a kept image shows its caption and that it was trained on."""
    from spiders.sources.demo_site import generate_demo_site

    truth = generate_demo_site(factory_run["tmp"] / "site-explain", seed=0).ground_truth
    run_dir = factory_run["run_dir"]
    rejected = pq.read_table(run_dir / "crawl" / "rejected.parquet").to_pylist()
    corrupt = next(r for r in rejected if truth.get(urlparse(r["url"]).path, {}).get("kind") == "corrupt")

    def explain(key: str) -> str:
        proc = run_cli("explain", run_dir.name, key, "--home", str(factory_run["home"]), cwd=factory_run["tmp"])
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    assert f"{corrupt['url']}: refused by crawl, reason {corrupt['reason']}" in explain(corrupt["url"])
    page = pq.read_table(run_dir / "crawl" / "pages.parquet").to_pylist()[0]
    assert f"page {page['url']}: {page['decision']}" in explain(page["url"])
    labels = pq.read_table(run_dir / "label" / "labels.parquet").to_pylist()
    kept = explain(labels[0]["item_id"][:16])
    assert "kept through curate, label" in kept and f"{labels[0]['caption']!r}" in kept and "trained on" in kept


def test_a_copied_home_lists_resumes_and_opens_its_runs(factory_run: dict) -> None:
    """Copy the whole data folder elsewhere (as to another machine): its runs are listed, a
    resume works from the copy, and MLflow's artefacts resolve inside the copy."""
    import shutil

    from mlflow.tracking import MlflowClient

    home = factory_run["tmp"] / "copied" / "home"
    shutil.copytree(factory_run["home"], home)
    run_id = factory_run["run_dir"].name
    listed = run_cli("runs", "--home", str(home), cwd=factory_run["tmp"])
    assert listed.returncode == 0 and run_id in listed.stdout and "done" in listed.stdout
    resumed = run_cli("run", "--resume", run_id, "--home", str(home), cwd=factory_run["tmp"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"run directory {home / 'runs' / run_id}" in resumed.stdout
    state = json.loads((home / "runs" / run_id / "run.json").read_text())
    # nothing changed: every stage is a cache hit and nothing ran again
    assert {s: state["stages"][s]["cache"]["decision"] for s in STAGES} == dict.fromkeys(STAGES, "hit")
    assert [h["status"] for h in state["stages"]["train"]["history"]] == ["running", "done"]
    client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    parent = client.get_run(state["mlflow_parent_run_id"])
    assert parent.info.artifact_uri.startswith((home / "mlartifacts").as_uri())
    assert parent.data.tags["cache.train"] == "hit"


def _without_prefect_server(tmp: Path, name: str) -> tuple[dict[str, str], Path]:
    """The environment of a CLI run with no Prefect server configured (a flow would start a
    temporary one) and a Prefect home of its own: its database exists only if a server started."""
    import os

    prefect_home = tmp / name
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"} | {"PREFECT_HOME": str(prefect_home)}
    return env, prefect_home


def _flow_runs(prefect_home: Path) -> list[tuple[str, str]]:
    import sqlite3

    with sqlite3.connect(prefect_home / "prefect.db") as db:
        return db.execute("select f.name, r.state_type from flow_run r join flow f on f.id = r.flow_id").fetchall()


@pytest.fixture(scope="module")
def cached_home(factory_run: dict) -> Path:
    """A copy of the finished run's home, so these re-runs leave the other tests' run alone."""
    import shutil

    home = factory_run["tmp"] / "cached" / "home"
    shutil.copytree(factory_run["home"], home)
    return home


def test_a_fully_cached_rerun_without_a_server_starts_no_flow_and_records_its_hits(
        factory_run: dict, cached_home: Path) -> None:
    from mlflow.tracking import MlflowClient

    run_id = factory_run["run_dir"].name
    run_json = cached_home / "runs" / run_id / "run.json"
    before = json.loads(run_json.read_text())
    env, prefect_home = _without_prefect_server(factory_run["tmp"], "prefect-cached")
    rerun = subprocess.run([str(CLI), "run", "--resume", run_id, "--home", str(cached_home)], cwd=factory_run["tmp"],
                           env=env, capture_output=True, text=True, timeout=2400)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "nothing changed: every stage is a cache hit, so no flow ran" in rerun.stdout
    assert f"run directory {cached_home / 'runs' / run_id}" in rerun.stdout
    assert not (prefect_home / "prefect.db").exists()  # no temporary server started, no flow run recorded
    state = json.loads(run_json.read_text())
    assert {s: state["stages"][s]["cache"]["decision"] for s in STAGES} == dict.fromkeys(STAGES, "hit")
    assert all(state["stages"][s]["history"] == before["stages"][s]["history"] for s in STAGES)
    assert state["status"] == "done" and len(state["resumes"]) == len(before.get("resumes", [])) + 1
    parent = MlflowClient(f"sqlite:///{cached_home / 'mlflow.db'}").get_run(state["mlflow_parent_run_id"])
    assert {s: parent.data.tags[f"cache.{s}"] for s in STAGES} == dict.fromkeys(STAGES, "hit")
    assert parent.data.tags["cache.deploy.reason"] == "inputs, settings and code unchanged"
    assert parent.info.status == "FINISHED"
    _assert_summary(cached_home, state, ["hit"] * len(STAGES))
    timings = json.loads((cached_home / "runs" / run_id / "timings.json").read_text())
    assert [r["seconds"] for r in timings["stages"]] == [before["stages"][s]["seconds"] for s in STAGES]


def _assert_summary(home: Path, state: dict, cache: list[str]) -> None:
    """The run's summary.md and timings.json, written by the re-run (its cache decisions) into
    the run directory and logged to the MLflow parent run."""
    from mlflow.artifacts import download_artifacts

    run_dir = home / "runs" / state["run_id"]
    summary = (run_dir / "summary.md").read_text()
    timings = json.loads((run_dir / "timings.json").read_text())
    assert [(r["stage"], r["status"], r["cache"]) for r in timings["stages"]] == list(zip(STAGES, ["done"] * 7, cache, strict=True))
    for stage, decision in zip(STAGES, cache, strict=True):
        assert f"| {stage} | done | {decision} | " in summary
    assert "status **done**" in summary and "Decision: version " in summary and "champion before: " in summary
    assert f"run `{state['mlflow_parent_run_id']}`" in summary and f"{run_dir}/deploy/report.html" in summary
    uri = f"sqlite:///{home / 'mlflow.db'}"
    for name, local in (("summary.md", summary), ("timings.json", timings)):
        logged = Path(download_artifacts(run_id=state["mlflow_parent_run_id"], artifact_path=name, tracking_uri=uri))
        assert (logged.read_text() if name.endswith(".md") else json.loads(logged.read_text())) == local


def test_a_rerun_with_one_changed_setting_still_runs_the_flow(factory_run: dict, cached_home: Path) -> None:
    run_id = factory_run["run_dir"].name
    env, prefect_home = _without_prefect_server(factory_run["tmp"], "prefect-changed")
    rerun = subprocess.run([str(CLI), "run", "--resume", run_id, "--home", str(cached_home),
                            "--set", "deploy.approval_timeout_s=3600"], cwd=factory_run["tmp"], env=env,
                           capture_output=True, text=True, timeout=2400)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "no flow ran" not in rerun.stdout
    assert _flow_runs(prefect_home) == [("lora-factory", "COMPLETED")]
    state = json.loads((cached_home / "runs" / run_id / "run.json").read_text())
    assert state["stages"]["deploy"]["cache"] == {**state["stages"]["deploy"]["cache"], "decision": "miss",
                                                  "reason": "changed: settings"}
    assert [state["stages"][s]["cache"]["decision"] for s in STAGES[:-1]] == ["hit"] * (len(STAGES) - 1)
    assert state["stages"]["deploy"]["history"][-1]["status"] == "done"
    _assert_summary(cached_home, state, ["hit"] * (len(STAGES) - 1) + ["miss"])


def test_an_edited_review_sheet_changes_the_trained_captions(factory_run: dict) -> None:
    """The review loop through the CLI: edit label/captions.csv, resume with label.review_file;
    label and every stage after it run again (crawl and curate are cache hits), the edited caption is
    recorded as human, and the training that follows used it. Runs last: it re-trains the run."""
    import csv

    from safetensors import safe_open

    run_dir = factory_run["run_dir"]
    before = json.loads((run_dir / "run.json").read_text())
    args_before = json.loads((run_dir / "train" / "lora" / "training_args.json").read_text())
    with (run_dir / "label" / "captions.csv").open(encoding="utf-8-sig", newline="") as f:
        rows = list(csv.DictReader(f))
    edited = "lfstyle, a hand-edited caption of a lighthouse at sunset"
    rows[0]["caption"] = edited
    sheet = factory_run["tmp"] / "reviewed.csv"
    with sheet.open("w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    resumed = run_cli("run", "--resume", run_dir.name, "--home", str(factory_run["home"]),
                      "--set", f"label.review_file={sheet}", cwd=factory_run["tmp"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    state = json.loads((run_dir / "run.json").read_text())
    decisions = {s: state["stages"][s]["cache"] for s in STAGES}
    missed = [s for s in STAGES if decisions[s]["decision"] == "miss"]
    assert missed[0] == "label" and {"train", "evaluate", "deploy"} <= set(missed)  # tune: if the stats moved
    assert decisions["label"]["reason"] == "changed: settings"
    assert decisions["train"]["reason"].startswith("changed: input label.")
    for stage in ("crawl", "curate"):
        assert state["stages"][stage]["history"] == before["stages"][stage]["history"]
    assert [h["status"] for h in state["stages"]["label"]["history"][-2:]] == ["running", "done"]
    labels = {r["item_id"]: r for r in pq.read_table(run_dir / "label" / "labels.parquet").to_pylist()}
    assert labels[rows[0]["item_id"]]["caption"] == edited
    assert labels[rows[0]["item_id"]]["caption_source"] == "human"
    args_after = json.loads((run_dir / "train" / "lora" / "training_args.json").read_text())
    assert args_after["dataset_hash"] != args_before["dataset_hash"]  # the captions trained on changed
    with safe_open(str(run_dir / "train" / "lora" / "lora_kohya.safetensors"), framework="pt") as f:
        meta = f.metadata()
    tags = json.loads(meta["ss_tag_frequency"])
    (folder,) = tags.values()
    assert folder["a hand-edited caption of a lighthouse at sunset"] == 1 and folder["lfstyle"] == len(labels)
    assert meta["modelspec.trigger_phrase"] == "lfstyle"
