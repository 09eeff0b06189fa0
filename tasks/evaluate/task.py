"""The Prefect task: the run's prompts from the label stage's outputs, the training images as
the fidelity reference, the LoRA from train; scores to MLflow (stage run, and a summary with the
final loss on the parent run so factory runs sort by them), the grid as an MLflow image, and the
model card with the scores."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lora_factory.catalog import (
    EVAL_GRID,
    EVAL_LORA,
    EVAL_MODEL_CARD,
    EVAL_REPORT,
    EVAL_RESULT,
    LABEL_CAPTION_STATS,
    LABEL_DATASET,
    TRAIN_CHECKPOINTS,
    TRAIN_LORA,
    TRAIN_SAMPLES,
    TUNE_TRAIN_CONFIG,
)
from lora_factory.config import FactoryConfig, TrainConfig
from lora_factory.context import RunRef, Stage, run_stage
from lora_factory.home import home_of
from lora_factory.scaleout import mapper_for
from lora_factory.schemas import CaptionStats, EvalResult
from training.dataset import read_records, split_records
from training.export_kohya import KOHYA_WEIGHT_NAME
from training.lora import LORA_WEIGHT_NAME
from training.model_card import with_eval_scores
from training.save import MODEL_CARD_NAME

from .._prefect import stage_task
from .batches import EvalBatches
from .best import FINAL, choose, write_chosen
from .efficiency import efficiency_metrics
from .prompts import MAX_TAGS, Concept, EvalPrompt, build_prompts
from .stage import STAGE, EvalSetup, evaluate_lora, training_losses


def run_prompts(cfg: FactoryConfig, stats: CaptionStats, topics: list[str], heldout: list[str]) -> list[EvalPrompt]:
    """The run's prompts: its trigger word, concept summary and top tags (from the label stage)."""
    tags = tuple(stats.concept_tags(MAX_TAGS))
    concept = Concept(trigger=stats.trigger_word or cfg.label.trigger_word,
                      topic=topics[0] if topics else (stats.concept_summary or "the subject"),
                      summary=stats.concept_summary, tags=tags)
    e = cfg.evaluate
    return build_prompts(concept, e.prompts, e.generalisation_prompts, e.leakage_prompts,
                         heldout[: e.max_heldout_captions])


def dataset_split(dataset: Path, tcfg: TrainConfig, seed: int) -> tuple[list[Path], list[str]]:
    """(every image of the training folder, the captions of the trainer's validation split)."""
    records = read_records(dataset)
    _, held = split_records(records, tcfg.validation_split, seed)
    return [r.path for r in records], [r.caption for r in held]


def eval_batches(cfg: FactoryConfig) -> EvalBatches | None:
    """Rendering and image scoring on Dask (``runtime.executor: dask``); None: in process."""
    mapper = mapper_for(cfg.runtime)
    if mapper is None:
        return None
    return EvalBatches(mapper, cfg.runtime.batch_items, tuple(cfg.evaluate.embeddings),
                       {"clip": cfg.models.clip_scorer, "dino": cfg.models.dino_scorer})


def log_result(st: Stage, result: EvalResult) -> None:
    """Every score and metric on the stage run; a summary (and the final loss) on the parent run."""
    flat = {f"score_{k}": v for k, v in result.scores.items() if v is not None}
    for name, pair in result.metrics.items():
        flat |= {f"{name}_{side}": v for side, v in (("base", pair.base), ("lora", pair.lora)) if v is not None}
    flat |= {"eval_pass": float(result.verdict == "pass"), "eval_errors": float(len(result.errors()))}
    flat |= efficiency_metrics((result.model_extra or {}).get("efficiency") or {})
    clip_t = result.metrics.get("clip_t")
    if clip_t is not None and clip_t.gain is not None:
        flat["clip_t_delta"] = clip_t.gain  # the tuner's history ranks past runs by it
    st.log_metrics(flat)
    summary = {f"eval_{k}": v for k, v in result.scores.items() if v is not None} | {
        "eval_pass": float(result.verdict == "pass")}
    if getattr(result, "final_loss", None) is not None:
        summary["final_loss"] = result.final_loss
    st.tracker.log_metrics(st.ref.parent_run_id, summary)
    st.tracker.set_tags(st.ref.parent_run_id, {"eval_verdict": result.verdict,
                                               "eval_random_scorers": ",".join(result.random_scorers) or "none"})
    for f in result.findings:
        st.log.warning("evaluate: %s: %s", f.code, f.message)


def best_lora(st: Stage, setup: EvalSetup, lora_dir: Path, prompts: list[EvalPrompt]) -> Path:
    """``evaluate.best_of_last``: the adapter folder of the best of the last K checkpoints and the
    final LoRA (``evaluate/lora`` when a checkpoint won, else train's); ``setup`` gets the choice."""
    checkpoints = st.input_path(TRAIN_CHECKPOINTS)
    choice = choose(setup, lora_dir, checkpoints, prompts, st.config.evaluate, st.scratch / "candidates")
    chosen_dir, shipped = lora_dir, TRAIN_LORA
    if choice.replaced:
        chosen_dir = write_chosen(choice, lora_dir, checkpoints, setup.family, st.output_path(EVAL_LORA))
        shipped = EVAL_LORA
    setup.best_checkpoint = choice.record(f"{shipped.run_path}/{LORA_WEIGHT_NAME}")
    kohya = chosen_dir / KOHYA_WEIGHT_NAME
    setup.kohya_file = kohya if kohya.is_file() else None
    st.log.info("evaluate: best checkpoint %s of %s", choice.chosen, ", ".join(
        f"{n}={v:.4f}" for n, v in choice.scores.items()))
    for name, score in choice.scores.items():  # a step axis in the UI, next to the loss
        step = len(setup.losses) if name == FINAL else int(name.rsplit("-", 1)[-1])
        st.log_metrics({"checkpoint_score": score}, step=step)
    st.tracker.set_tags(st.ref.parent_run_id, {"best_checkpoint": choice.chosen})
    return chosen_dir


def card_with_scores(lora_dir: Path, result: EvalResult) -> str:
    card = (lora_dir / MODEL_CARD_NAME).read_text(encoding="utf-8")
    notes = [f"verdict: {result.verdict}"] + [f"{f.code}: {f.message}" for f in result.findings]
    best = (result.model_extra or {}).get("best_checkpoint")
    if best:
        notes.append(f"best checkpoint: {best['chosen']} of " + ", ".join(c["name"] for c in best["candidates"]))
    return with_eval_scores(card, {k: v for k, v in result.scores.items() if v is not None}, notes)


@stage_task(STAGE)
def evaluate_task(ref: RunRef) -> dict[str, Any]:
    with run_stage(ref, STAGE) as st:
        cfg = st.config
        tcfg = st.read(TUNE_TRAIN_CONFIG)
        references, heldout = dataset_split(st.input_path(LABEL_DATASET), tcfg, cfg.seed)
        stats = st.read(LABEL_CAPTION_STATS)
        prompts = run_prompts(cfg, stats, ref.topics, heldout)
        lora_dir = st.input_path(TRAIN_LORA)
        setup = EvalSetup(cfg.models.base, cfg.models.base_family, cfg.models.clip_scorer, home_of(cfg).models,
                          cfg.evaluate.resolution or tcfg.resolution, stats.trigger_word or cfg.label.trigger_word,
                          references, training_losses(lora_dir), scorer_refs={"dino": cfg.models.dino_scorer})
        setup.run_dir = st.input_dir(TRAIN_LORA).parent
        samples_dir = st.input_path(TRAIN_SAMPLES)
        setup.sample_grids = sorted(samples_dir.glob("step-*.png")) if samples_dir.is_dir() else []
        if (lora_dir / KOHYA_WEIGHT_NAME).is_file():
            setup.kohya_file = lora_dir / KOHYA_WEIGHT_NAME
        st.log_params({**cfg.evaluate.model_dump(), "resolved_prompts": [p.text for p in prompts],
                       "resolution": setup.resolution, "clip_scorer": cfg.models.clip_scorer})
        if cfg.evaluate.best_of_last:
            lora_dir = best_lora(st, setup, lora_dir, prompts)
        result = evaluate_lora(lora_dir / LORA_WEIGHT_NAME, prompts, cfg.evaluate, setup, st.out, eval_batches(cfg))
        st.write(EVAL_MODEL_CARD, card_with_scores(lora_dir, result))
        log_result(st, result)
        from PIL import Image

        with Image.open(st.output_path(EVAL_GRID)) as grid:
            st.tracker.client.log_image(st.mlflow_run_id, grid.copy(), artifact_file="eval_grid.png")
            # step-indexed too, at the training's last step: the UI's image slider next to the samples
            st.tracker.client.log_image(st.mlflow_run_id, grid.copy(), key="eval_grid", step=len(setup.losses))
        for output in (EVAL_RESULT, EVAL_REPORT, EVAL_MODEL_CARD):
            st.log_artifact(st.output_path(output))
    return {"verdict": result.verdict, **{k: v for k, v in result.scores.items() if v is not None}}
