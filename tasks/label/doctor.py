"""The dataset doctor on the folder label just wrote (``doctor.enabled``): ``label/doctor.json``
and ``doctor.html``. The train stage's gate reads the report before any step (``datatools.gate``).

Why in label and not in train: the report is an output of the stage that made the dataset, so it
survives a stopped run (train's staged outputs do not), and a resumed run after the minimums are
changed re-runs only train. Buckets are not checked here: the tuner picks the batch size after
label, and train's gate checks them against its choice (``datatools.gate.for_training``).
"""

from __future__ import annotations

from typing import Any

from datatools.cache import MeasureCache
from datatools.doctor import diagnose, settings_for, write_report
from datatools.narrative import narrate
from datatools.readers import read_folder
from lora_factory.catalog import LABEL_DATASET, LABEL_DOCTOR, LABEL_DOCTOR_REPORT
from lora_factory.context import Stage, get_logger
from lora_factory.home import home_of
from lora_factory.schemas import DoctorReport


def concept_prompt(topic_prompt: str, topics: list[str]) -> str:
    """The run's concept as CLIP should read it: the curate topic prompt over all topics."""
    return topic_prompt.format(topic=" and ".join(topics) or "the concept")


def run_doctor(st: Stage, clip: Any, budget: Any, topics: list[str]) -> DoctorReport:
    """Inspect the staged dataset folder and write the doctor's two outputs."""
    cfg = st.config
    if clip is None:
        from lora_factory.models import load_clip_scorer

        clip = load_clip_scorer(cfg.models.clip_scorer, home_of(cfg).models)
    ds = read_folder(st.output_path(LABEL_DATASET))
    ds.source = LABEL_DATASET.run_path
    report = diagnose(ds, concept_prompt(cfg.curate.topic_prompt, topics), clip, cfg.models.clip_scorer, budget,
                      settings_for(cfg, cfg.label.trigger_word, batch_size=1), MeasureCache(home_of(cfg).doctor_cache, cfg.models.clip_scorer))
    if cfg.doctor.narrative:
        report = narrate(report, cfg.label.llm, home_of(cfg).llm_cache, get_logger().warning, cfg.seed)
    st.output_path(LABEL_DOCTOR), st.output_path(LABEL_DOCTOR_REPORT)  # declared: the contract checks
    for path in write_report(report, ds.root, st.out, cfg.doctor.thumbnails):
        st.log_artifact(path)
    st.log_metrics({f"doctor_{k}": s.value for k, s in report.scores.items()}
                   | {"doctor_findings": len(report.findings)})
    return report
