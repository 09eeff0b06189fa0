"""The deploy stage on a run whose train and evaluate are done: gate, mlflow.diffusers version,
aliases, decision.json, the MLflow run's tags, exports; then a worse run is rejected with a
suggestion and exports nothing."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest

from lora_factory.catalog import EVAL_MODEL_CARD, EVAL_REPORT, EVAL_RESULT, LABEL_LABELS, TRAIN_LORA
from lora_factory.profiles import load_config
from lora_factory.report_decision import PENDING, decision_section
from lora_factory.runstore import DONE, RunDir
from lora_factory.schemas import EvalResult

from .hub_server import fake_hub, go_online

HF_TOKEN = "hf_test_token_0123456789abcdefXYZ"
EVALUATED_CARD = "# lighthouse\n\n## Evaluation\n\noverall_score 0.30 (evaluate's card)\n"

pytestmark = pytest.mark.e2e


def _run(cfg, tiny_lora: Path, overall: float) -> tuple[dict, RunDir]:  # noqa: ANN001 - FactoryConfig
    from lora_factory.lifecycle import start_run
    from tasks.deploy import deploy_task

    ref = start_run(cfg, ["lighthouse"])
    run = ref.run_dir()
    for stage in ("crawl", "curate"):
        run.set_stage(stage, DONE)
    LABEL_LABELS.write(Path(run.store.local_path(f"{run.key}/label")),
                       [{"item_id": f"{i:064x}", "file_name": f"{i}.png", "caption": "lfstyle", "caption_source": "topic",
                         "license": lic} for i, lic in enumerate(["CC0", "CC0", "CC-BY-4.0"])])
    run.set_stage("label", DONE)
    run.set_stage("tune", DONE)
    shutil.copytree(tiny_lora, TRAIN_LORA.at(Path(run.store.local_path(f"{run.key}/train"))))
    run.set_stage("train", DONE)
    EVAL_RESULT.write(Path(run.store.local_path(f"{run.key}/evaluate")), EvalResult(
        base_ref="tiny:sd", family="sd15", lora_path="l", verdict="pass", resolution=64,
        scores={"overall_score": overall, "fidelity_gain": 0.02, "adherence_delta": 0.0, "copy_risk": 0.0}))
    EVAL_REPORT.write(Path(run.store.local_path(f"{run.key}/evaluate")),
                      f"<html><body><h1>eval</h1>{decision_section(None)}</body></html>")
    EVAL_MODEL_CARD.write(Path(run.store.local_path(f"{run.key}/evaluate")), EVALUATED_CARD)
    run.set_stage("evaluate", DONE)
    record = deploy_task.fn(ref)
    assert json.loads((run.stage_path("deploy") / "decision.json").read_text()) == record
    report = (run.stage_path("deploy") / "report.html").read_text()
    assert PENDING not in report and f"version <b>{record['version']}</b>" in report
    assert f"<span class='{'pass' if record['verdict'] == 'promoted' else 'fail'}'>{record['verdict']}</span>" in report
    return record, run


def test_deploy_stage_promotes_then_rejects(tiny_lora: Path, model_cache: Path, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """The promoted version is also pushed to a loopback Hugging Face Hub stand-in; its token is
    nowhere in what the run records."""
    from mlflow.tracking import MlflowClient

    caplog.set_level(logging.DEBUG)
    home = tmp_path / "home"
    home.mkdir()
    (home / "models").symlink_to(model_cache)
    cfg = load_config("tiny", {"home": str(home), "deploy.gate.on_missing": "skip",
                               "deploy.export.loras_dir": str(tmp_path / "loras"),
                               "deploy.export.hub_repo": "me/lighthouse"}, environ={})
    go_online(monkeypatch)
    monkeypatch.setenv("HF_TOKEN", HF_TOKEN)
    with fake_hub() as (hub_url, hub):
        monkeypatch.setenv("HF_ENDPOINT", hub_url)
        first, first_dir = _run(cfg, tiny_lora, 0.30)
    assert first["exports"]["hub"].startswith(f"{hub_url}/me/lighthouse/commit/")
    assert {"pytorch_lora_weights.safetensors", "README.md"} <= set(hub.files)
    assert hub.files["README.md"] == EVALUATED_CARD.encode()  # the card with the scores, not the trainer's
    assert first["verdict"] == "promoted" and first["concept"] == "lighthouse"
    assert first["aliases"] == ["candidate", "champion"] and first["suggestion"] is None
    assert "skipped: portability" in first["reason"] and first["approval"]["status"] == "not_required"
    assert (tmp_path / "loras" / "lighthouse.safetensors").is_file()
    assert (home / "loras" / "lighthouse" / f"v{first['version']}" / "pytorch_lora_weights.safetensors").is_file()

    second, second_dir = _run(cfg, tiny_lora, 0.10)
    assert second["verdict"] == "rejected" and second["aliases"] == ["candidate"] and "exports" not in second
    assert "does not beat the champion's 0.3000" in second["reason"]
    assert second["suggestion"]["changes"] == {"more_data": 1.5, "max_steps": 1.25}
    # decision.json says which champion the gate met and which one the deploy left
    assert (first["champion"], first["champion_after"]) == (None, first["version"])
    assert (second["champion"], second["champion_after"]) == (first["version"], first["version"])
    # deploy's cache key holds the champion as it left it: its own promotion is no change...
    assert _deploy_cache(cfg, first_dir).hit and _deploy_cache(cfg, second_dir).hit

    client = MlflowClient(f"sqlite:///{home}/mlflow.db")
    mv = client.get_model_version("lighthouse", second["version"])
    assert mv.tags["licences"] == "CC0: 2, CC-BY-4.0: 1" and mv.tags["trigger_word"] and mv.tags["gate"] == "fail"
    assert str(client.get_model_version_by_alias("lighthouse", "champion").version) == first["version"]
    deploy_run = client.get_run(mv.run_id)
    assert deploy_run.data.tags["verdict"] == "rejected"
    assert json.loads(deploy_run.data.tags["suggestion"])["changes"]["max_steps"] == 1.25
    first_run = client.get_run(client.get_model_version("lighthouse", first["version"]).run_id)
    recorded = json.dumps([first_run.data.params, first_run.data.tags, first, second])
    assert "HF_TOKEN" in recorded and HF_TOKEN not in recorded  # the variable's name only
    assert HF_TOKEN not in caplog.text
    for f in home.rglob("*"):
        if f.is_file() and f.suffix in {".json", ".log", ".txt", ".yaml", ".md", ".jsonl"}:
            assert HF_TOKEN not in f.read_text(errors="replace"), f

    from deploy.registry import promote
    from lora_factory.context import make_tracker

    promote(make_tracker(cfg), "lighthouse", second["version"], cfg.deploy)  # another run moves it
    moved = _deploy_cache(cfg, first_dir)  # ...another run's move is: a re-run decides again
    assert not moved.hit
    assert moved.reason == f"the champion moved: lighthouse@champion from version {first['version']} to {second['version']}"


def _deploy_cache(cfg, run: RunDir):  # noqa: ANN001, ANN202 - FactoryConfig, CacheDecision
    from lora_factory.stage_keys import decide

    return decide(run.state(), "deploy", cfg.model_dump(mode="json"), run.stage_path)
