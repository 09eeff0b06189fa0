"""Deploy: apply the gate to the evaluation, register the LoRA as an MLflow model (the
``mlflow.diffusers`` flavor) of its concept, and move the aliases the gate decides.

The decision is ``deploy.gate.gate`` (pure); this stage gathers its inputs, performs the side
effects (registry, ``deploy/decision.json``, the MLflow run, a Prefect markdown artifact).
"""

from __future__ import annotations

from typing import Any

from deploy.decision import dataset_hash, decision_record, licence_summary, version_tags
from deploy.gate import GateDecision, gate, render_markdown
from deploy.registry import (
    champion_score,
    concept_name,
    flavor_base_model,
    log_lora_model,
    promote,
    register_candidate,
)
from lora_factory.catalog import DEPLOY_DECISION, EVAL_RESULT, LABEL_LABELS, TRAIN_LORA
from lora_factory.context import RunRef, Stage, get_logger, run_stage
from lora_factory.home import home_of

from ._prefect import stage_task

STAGE = "deploy"


def _facts(st: Stage, ref: RunRef) -> dict[str, str]:
    """What a registered version says about where it came from."""
    cfg = st.config
    labels = st.read(LABEL_LABELS)
    return {"lora_factory.run_id": ref.run_id, "topics": ", ".join(ref.topics),
            "base_model": cfg.models.base, "base_family": cfg.models.base_family,
            "trigger_word": cfg.label.trigger_word, "dataset_hash": dataset_hash(st.input_path(TRAIN_LORA)),
            "num_images": str(labels.num_rows), "licences": licence_summary(labels.column("license").to_pylist())}


def _publish(st: Stage, record: dict[str, Any], decision: GateDecision) -> None:
    """The decision on the MLflow run (tags, metric, markdown) and as a Prefect artifact."""
    markdown = render_markdown(decision, record["concept"])
    st.tracker.set_tags(st.mlflow_run_id, {"verdict": record["verdict"], "gate": "pass" if decision.promote else "fail",
                                           "concept": record["concept"], "gate_reason": decision.reason})
    st.tracker.log_text(st.mlflow_run_id, markdown, "deploy/decision.md")
    st.log_metrics({"promoted": float(record["verdict"] == "promoted"), "model_version": float(record["version"])})
    st.log_artifact(st.output_path(DEPLOY_DECISION))
    try:
        from prefect.artifacts import create_markdown_artifact

        create_markdown_artifact(markdown, key="lora-factory-gate",
                                 description=f"Gate decision for {record['concept']} v{record['version']}")
    except Exception as e:  # noqa: BLE001 - the decision is recorded; an artifact API hiccup must not undo it
        get_logger().warning("deploy: could not attach the gate artifact: %s", e)


@stage_task(STAGE)
def deploy_task(ref: RunRef) -> dict[str, Any]:
    with run_stage(ref, STAGE) as st:
        cfg = st.config.deploy
        concept = concept_name(cfg.concept, ref.topics)
        st.log_params({**cfg.model_dump(), "concept": concept})
        result = st.read(EVAL_RESULT)
        decision = gate(result, cfg.gate, champion_score(st.tracker, concept, cfg.champion_alias))
        facts = _facts(st, ref)
        base = flavor_base_model(st.config.models.base, home_of(st.config).models)
        log_lora_model(st.tracker, st.mlflow_run_id, st.input_path(TRAIN_LORA), base, facts)
        version = register_candidate(st.tracker, st.mlflow_run_id, concept, cfg,
                                     version_tags(facts, result, decision),
                                     f"LoRA for {facts['topics']}: {decision.reason}")
        aliases = promote(st.tracker, concept, version, cfg) if decision.promote else [cfg.candidate_alias]
        record = decision_record(concept, version, aliases, decision,
                                 "promoted" if decision.promote else "rejected")
        st.write(DEPLOY_DECISION, record)
        _publish(st, record, decision)
    return record
