"""Deploy: the Prefect task around ``deploy.registry.register_lora``."""

from __future__ import annotations

from typing import Any

from deploy.registry import register_lora
from lora_factory.catalog import DEPLOY_DECISION, EVAL_RESULT, TRAIN_LORA
from lora_factory.context import RunRef, run_stage

from ._prefect import stage_task

STAGE = "deploy"


@stage_task(STAGE)
def deploy_task(ref: RunRef) -> dict[str, Any]:
    with run_stage(ref, STAGE) as st:
        cfg = st.config.deploy
        st.log_params(cfg.model_dump())
        eval_result = st.read(EVAL_RESULT)
        tags = {"lora_factory.run_id": ref.run_id, "topics": ", ".join(ref.topics),
                "base_model": st.config.models.base, "trigger_word": st.config.label.trigger_word}
        record = register_lora(st.tracker, st.mlflow_run_id, st.input_path(TRAIN_LORA), eval_result,
                               cfg, tags)
        st.write(DEPLOY_DECISION, record)
        st.log_metrics({"promoted": float(record["promote"]), "model_version": float(record["version"])})
        st.log_artifact(st.output_path(DEPLOY_DECISION))
    return record
