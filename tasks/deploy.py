"""Deploy: apply the gate to the evaluation, register the LoRA as an MLflow model (the
``mlflow.diffusers`` flavor) of its concept, and move the aliases the gate decides.

The decision is ``deploy.gate.gate`` (pure); this stage gathers its inputs, performs the side
effects (registry, ``deploy/decision.json``, the MLflow run, a Prefect markdown artifact).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

from deploy.approval import ApprovalOutcome, ask, decide
from deploy.decision import dataset_hash, decision_record, licence_summary, version_tags
from deploy.export import fp16_copy, fused_pipeline, modelspec, to_loras_folder, to_store
from deploy.gate import GateDecision, gate, render_markdown
from deploy.hub import hub_token, push_lora
from deploy.registry import (
    champion_score,
    concept_name,
    flavor_base_model,
    log_lora_model,
    promote,
    register_candidate,
)
from deploy.suggest import SUGGESTION_TAG, suggest
from lora_factory.catalog import (
    DEPLOY_DECISION,
    DEPLOY_REPORT,
    EVAL_GRID,
    EVAL_LORA,
    EVAL_MODEL_CARD,
    EVAL_REPORT,
    EVAL_RESULT,
    LABEL_LABELS,
    TRAIN_LORA,
)
from lora_factory.context import RunRef, Stage, get_logger, run_stage
from lora_factory.home import home_of, run_store_for
from lora_factory.report_decision import with_decision
from training.save import MODEL_CARD_NAME

from ._prefect import stage_task

STAGE = "deploy"


def shipped_lora(st: Stage) -> Path:
    """The run's LoRA: the checkpoint evaluate chose (``evaluate/lora``, evaluate.best_of_last)
    when one before the final won, else the train stage's adapter folder."""
    chosen = st.input_path(EVAL_LORA)
    return chosen if EVAL_LORA.exists(st.input_dir(EVAL_LORA)) else st.input_path(TRAIN_LORA)


def _facts(st: Stage, ref: RunRef) -> dict[str, str]:
    """What a registered version says about where it came from."""
    cfg = st.config
    labels = st.read(LABEL_LABELS)
    return {"lora_factory.run_id": ref.run_id, "topics": ", ".join(ref.topics),
            "base_model": cfg.models.base, "base_family": cfg.models.base_family,
            "trigger_word": cfg.label.trigger_word, "dataset_hash": dataset_hash(shipped_lora(st)),
            "num_images": str(labels.num_rows), "licences": licence_summary(labels.column("license").to_pylist())}


def _publish(st: Stage, record: dict[str, Any], decision: GateDecision) -> None:
    """The decision on the MLflow run (tags, metric, markdown) and as a Prefect artifact."""
    markdown = render_markdown(decision, record["concept"]) + f"\nApproval: {record['approval']['note']}\n"
    st.tracker.set_tags(st.mlflow_run_id, {"verdict": record["verdict"], "gate": "pass" if decision.promote else "fail",
                                           "concept": record["concept"], "gate_reason": decision.reason,
                                           "approval": record["approval"]["note"]})
    if record["suggestion"]:  # the next run's tuner reads it here (deploy.suggest)
        markdown += f"\nSuggestion for the next run: {record['suggestion']['text']}\n"
        st.tracker.set_tags(st.mlflow_run_id, {SUGGESTION_TAG: json.dumps(record["suggestion"])})
    st.tracker.log_text(st.mlflow_run_id, markdown, "deploy/decision.md")
    st.log_metrics({"promoted": float(record["verdict"] == "promoted"), "model_version": float(record["version"])})
    st.log_artifact(st.output_path(DEPLOY_DECISION))
    st.log_artifact(st.output_path(DEPLOY_REPORT))
    try:
        from prefect.artifacts import create_markdown_artifact

        create_markdown_artifact(markdown, key="lora-factory-gate",
                                 description=f"Gate decision for {record['concept']} v{record['version']}")
    except Exception as e:  # noqa: BLE001 - the decision is recorded; an artifact API hiccup must not undo it
        get_logger().warning("deploy: could not attach the gate artifact: %s", e)


def _approval(st: Stage, ref: RunRef, decision: GateDecision, concept: str, version: str) -> ApprovalOutcome:
    """Ask a person when the gate passed and deploy.approval is required (the flow pauses)."""
    cfg = st.config.deploy
    required = cfg.approval == "required" and decision.promote
    answer = None
    if required:
        description = (render_markdown(decision, concept, "Approve this LoRA?")
                       + f"\nCandidate: `models:/{concept}@{cfg.candidate_alias}` (version {version}); "
                       f"evaluation grid: `{ref.run_dir().url}/{EVAL_GRID.run_path}`.\n"
                       f"Answer here or with `lora-factory approve {ref.run_id} [--reject] --comment ...`.\n")
        get_logger().info("deploy: %s v%s passed the gate; waiting for approval (lora-factory approve %s)",
                          concept, version, ref.run_id)
        answer = ask(ref.run_id, description, cfg.approval_timeout_s, cfg.on_timeout)
    return decide(decision.promote, cfg.approval == "required", answer, cfg.on_timeout)


def _adapter_folder(st: Stage, tmp: Path) -> Path:
    """The adapter as it ships: the trainer's files (no sample grids) with the evaluated model
    card (the scores; evaluate's README.md) in place of the trainer's "not evaluated yet" one."""
    folder = tmp / "adapter"
    shutil.copytree(shipped_lora(st), folder, ignore=shutil.ignore_patterns("samples"))
    card = st.input_path(EVAL_MODEL_CARD)
    if card.is_file():
        shutil.copyfile(card, folder / MODEL_CARD_NAME)
    return folder


def _export(st: Stage, record: dict[str, Any], facts: dict[str, str], resolution: int | None) -> dict[str, str]:
    """Copy a promoted version to the configured targets; returns target -> where."""
    cfg, ecfg = st.config, st.config.deploy.export
    lora_dir, concept, version = shipped_lora(st), record["concept"], record["version"]
    done: dict[str, str] = {}
    if ecfg.loras_dir:
        meta = modelspec(cfg.models.base_family, f"{concept} v{version}", facts["trigger_word"], resolution,
                         facts["licences"], f"LoRA for {facts['topics']} trained by lora-factory")
        done["loras_dir"] = str(to_loras_folder(lora_dir, Path(ecfg.loras_dir).expanduser(), concept,
                                                cfg.models.base_family, meta, facts["trigger_word"]))
    if not (ecfg.store or ecfg.variant != "none" or ecfg.hub_repo):
        return done
    with tempfile.TemporaryDirectory(prefix="lf-adapter-") as tmp:
        folder = _adapter_folder(st, Path(tmp))
        if ecfg.hub_repo:  # before the variants join the folder: the hub gets the adapter only
            done["hub"] = push_lora(folder, ecfg.hub_repo, hub_token(ecfg.hub_token_env), ecfg.hub_private,
                                    f"{concept} v{version} by lora-factory")
        if ecfg.store or ecfg.variant != "none":
            if ecfg.variant == "fp16":
                fp16_copy(lora_dir, folder / "fp16")
            elif ecfg.variant == "fused":
                fused_pipeline(lora_dir, cfg.models.base, cfg.models.base_family, home_of(cfg).models, folder / "fused")
            done["store"] = to_store(folder, run_store_for(cfg).store, concept, version, record)
    return done


@stage_task(STAGE)
def deploy_task(ref: RunRef) -> dict[str, Any]:
    with run_stage(ref, STAGE) as st:
        cfg = st.config.deploy
        if cfg.export.hub_repo:
            hub_token(cfg.export.hub_token_env)  # a missing token stops here, before anything is registered
        concept = concept_name(cfg.concept, ref.topics)
        st.log_params({**cfg.model_dump(), "concept": concept})
        result = st.read(EVAL_RESULT)
        champion = st.tracker.alias_version(concept, cfg.champion_alias)
        decision = gate(result, cfg.gate, champion_score(st.tracker, concept, cfg.champion_alias))
        facts = _facts(st, ref)
        base = flavor_base_model(st.config.models.base, home_of(st.config).models)
        log_lora_model(st.tracker, st.mlflow_run_id, shipped_lora(st), base, facts)
        version = register_candidate(st.tracker, st.mlflow_run_id, concept, cfg,
                                     version_tags(facts, result, decision),
                                     f"LoRA for {facts['topics']}: {decision.reason}")
        outcome = _approval(st, ref, decision, concept, version)
        st.tracker.client.set_model_version_tag(concept, version, "approval", outcome.note)
        aliases = promote(st.tracker, concept, version, cfg) if outcome.promote else [cfg.candidate_alias]
        advice = suggest(decision, [f.code for f in result.errors()]) if not outcome.promote else None
        record = decision_record(concept, version, aliases, decision,
                                 "promoted" if outcome.promote else "rejected",
                                 approval={**asdict(outcome), "note": outcome.note}, champion=champion,
                                 champion_after=st.tracker.alias_version(concept, cfg.champion_alias),
                                 suggestion=None if advice is None else {**asdict(advice), "text": advice.text})
        if outcome.promote:
            record["exports"] = _export(st, record, facts, result.model_extra.get("resolution"))
        st.write(DEPLOY_DECISION, record)
        st.write(DEPLOY_REPORT, with_decision(st.read(EVAL_REPORT), record))
        _publish(st, record, decision)
    return record
