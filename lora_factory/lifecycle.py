"""Starting, resuming and finishing a factory run.

``preflight`` checks everything a user can get wrong *before* anything is written, so a bad
topic list, an unwritable store or a dead tracking server costs one line and leaves no debris.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from . import runlock
from .config import FactoryConfig
from .context import RunRef, make_tracker
from .errors import ConfigError, FactoryError, StoreError, TrackingError
from .firstrun import ensure_tracking_store
from .home import Home, run_store_for
from .names import control_characters, run_label
from .profiles import config_from_data, env_var
from .runstore import DONE, STAGES, RunDir, now_iso
from .secrets import restore_secrets
from .services import check_redis
from .storage import open_store
from .tracking import Tracker, check_tracking_uri, flatten_params


def normalize_topics(topics: Iterable[str] | str | None) -> list[str]:
    """Strip, collapse white space, drop blanks, de-duplicate (case-insensitively, first
    spelling wins). Any other text is a topic; only control characters cannot work."""
    if isinstance(topics, str):
        topics = topics.split(",")
    seen: set[str] = set()
    out: list[str] = []
    for t in topics or []:
        if not isinstance(t, str):
            raise ConfigError(f"topic {t!r} is not text: pass topics as a list of strings")
        clean = " ".join(t.split())
        bad = control_characters(clean)
        if bad:
            raise ConfigError(
                f"topic {_shown(clean)} contains the control character {bad[0]}: remove it "
                "(a topic may hold any other text)"
            )
        if clean and clean.lower() not in seen:
            seen.add(clean.lower())
            out.append(clean)
    if not out:
        raise ConfigError(
            "no topics given: pass at least one, e.g. --topics 'lighthouse,sailboat' "
            "or --topics-file configs/topics/demo.yaml"
        )
    return out


def _shown(topic: str, max_len: int = 60) -> str:
    """A topic quoted for an error line: control characters as ``<U+0007>``, long ones cut."""
    text = "".join(f"<{control_characters(c)[0]}>" if control_characters(c) else c for c in topic)
    return repr(text if len(text) <= max_len else text[:max_len] + "…")


def preflight(cfg: FactoryConfig, topics: Iterable[str] | str | None) -> list[str]:
    """Validate topics, the store and the tracking URI; returns the normalised topics."""
    clean = normalize_topics(topics)
    if cfg.crawl.source == "dataset" and not Path(cfg.crawl.dataset or "").exists():
        raise ConfigError(f"crawl.dataset {cfg.crawl.dataset} does not exist: give a folder or .zip of images")
    if cfg.crawl.source == "seeds":
        missing = [t for t in clean if not cfg.crawl.seeds.get(t)]
        if missing:
            raise ConfigError(
                f"crawl.source is 'seeds' but crawl.seeds has no URLs for {missing}: "
                "add them (--seeds FILE) or use crawl.source=demo"
            )
    check_services(cfg)
    check_base_model(cfg)
    return clean


def check_base_model(cfg: FactoryConfig) -> None:
    """Read the base model's family from its ``model_index.json`` and keep it in the config (so
    every stage of the run sees it); a pipeline no family trains stops the run here, before the
    crawl, with one line."""
    from .models.families import detect_family

    family = detect_family(cfg.models.base, Home(Path(cfg.home)).models, cfg.models.base_family)
    if family is not None:
        cfg.models.base_family = family  # type: ignore[assignment]


def check_services(cfg: FactoryConfig) -> None:
    """The data folder and store are writable, the tracking store (and the crawl's Redis) answer."""
    home = Path(cfg.home)
    try:
        home.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise StoreError(f"cannot create the data folder {home}: {e.strerror}: set --home") from None
    open_store(cfg.store.root, cfg.store.s3_endpoint_url).check_writable()
    check_tracking_uri(cfg.tracking.uri)
    if cfg.crawl.redis_url:  # the distributed crawl's shared frontier
        check_redis(cfg.crawl.redis_url)


def git_sha() -> str | None:
    """The code version that ran, when it runs from a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


# On the MLflow parent run of an auto-refine attempt (deploy/refine.py): the first run's id and
# the attempt number, so the attempts of one concept's refinement are found together.
REFINE_OF_TAG = "lora_factory.refine_of"
REFINE_ATTEMPT_TAG = "lora_factory.refine_attempt"


def _refine_tags(cfg: FactoryConfig) -> dict[str, str]:
    rc = cfg.deploy.refine
    return {REFINE_OF_TAG: rc.of, REFINE_ATTEMPT_TAG: str(rc.attempt)} if rc.of else {}


def start_run(cfg: FactoryConfig, topics: list[str]) -> RunRef:
    """Create the run directory (locked by this process) and the MLflow parent run. If tracking
    refuses the run, it is recorded as failed, not left "running"."""
    runs = run_store_for(cfg)
    ensure_tracking_store(cfg)
    tracker = make_tracker(cfg)
    sha = git_sha()
    run = runs.create(topics, cfg.profile, cfg.model_dump(mode="json"), git_sha=sha, store=runs.store.url)
    runlock.hold(run)
    parent = None
    try:
        parent = tracker.start_parent(
            run_name=f"{run.run_id} {run_label(topics)}",
            tags={
                "lora_factory.run_id": run.run_id,
                "lora_factory.profile": cfg.profile,
                "lora_factory.topics": ", ".join(topics),
                "lora_factory.run_dir": run.url,
                **_refine_tags(cfg),
                **({"mlflow.source.git.commit": sha} if sha else {}),
            },
        )
        tracker.log_params(parent, {"topics": topics, **flatten_params(cfg.model_dump(mode="json"))})
        run.update(mlflow_parent_run_id=parent, mlflow_tracking_uri=cfg.tracking.uri)
    except Exception as e:  # noqa: BLE001 - MLflow raises many kinds (SQL, HTTP, validation): one line
        error = e if isinstance(e, FactoryError) else TrackingError(
            f"MLflow at {tracker.shown_uri} refused to start the run: {e}")
        _abandon(run, tracker, parent, str(error))
        raise error from None
    except BaseException as e:
        _abandon(run, tracker, parent, f"{type(e).__name__}: {e}")
        raise
    return RunRef(run_id=run.run_id, parent_run_id=parent, topics=topics, config=cfg)


def with_current_locations(saved: FactoryConfig, current: FactoryConfig, recorded: Mapping[str, Any]) -> FactoryConfig:
    """A resumed run keeps what it does (topics, stage settings) but takes where things are from
    this invocation: the home, and the store it was found in. A tracking store that was the
    recorded home's default follows the home too, so a moved or copied home resumes."""
    out = saved.model_copy(deep=True)
    out.home = current.home
    out.store = current.store.model_copy()
    old_default = f"sqlite:///{Home(Path(recorded.get('home', ''))).mlflow_db}"
    if saved.tracking.uri == old_default:
        out.tracking.uri = current.tracking.uri
    return out


def _abandon(run: RunDir, tracker: Tracker, parent: str | None, error: str) -> None:
    """A run that could not start: failed in run.json and MLflow, and unlocked."""
    try:
        run.update(status="failed", error=error)
        if parent:
            tracker.end(parent, "FAILED")
    finally:
        runlock.release(run)


def resume_config(cfg: FactoryConfig, state: Mapping[str, Any], overrides: Mapping[str, Any] | None) -> FactoryConfig:
    """The config a resumed run continues with: the one it started with (its recorded copy,
    with the credentials given again now, from flags or the environment: run.json keeps none),
    with ``overrides`` on top."""
    saved, missing = restore_secrets(state["config"], cfg.model_dump(mode="json"))
    if missing:
        shown = ", ".join(f"{p} ({_at(state['config'], p)})" for p in missing)
        setting = missing[0].split("[")[0]
        raise ConfigError(
            f"run {state['run_id']} was started with credentials in {shown}; run.json does not keep "
            f"them: give the setting again (--set {setting}=... or {env_var(setting)})"
        )
    return config_from_data(saved, [dict(overrides or {})], f"run {state['run_id']} with overrides")


def _at(data: Mapping[str, Any], dotted: str) -> Any:
    node: Any = data
    for part in dotted.split("[")[0].split("."):
        node = node.get(part) if isinstance(node, Mapping) else None
    return node


def resume_run(cfg: FactoryConfig, run_id: str, overrides: Mapping[str, Any] | None = None) -> RunRef:
    """Reopen ``run_id`` (found through ``cfg``'s store) to run its unfinished stages.

    The run keeps the topics and config it started with, so finished stages' outputs still
    agree with the rest; ``overrides`` (e.g. the setting that made a stage fail) apply on top
    and are recorded in run.json. This process locks the run (``runlock``) and clears what
    killed stages left in staging. Which finished stages run again is the flow's cache decision
    (``stage_keys``): those whose inputs, settings or code changed.
    """
    run = run_store_for(cfg).open(run_id)
    runlock.hold(run)
    try:
        state = run.state()
        if "mlflow_parent_run_id" not in state:
            raise StoreError(f"run '{run_id}' never started tracking: start a new run instead")
        saved = with_current_locations(resume_config(cfg, state, overrides), cfg, state["config"])
        run.clear_staging()
        resumes = state.get("resumes", []) + [{"at": now_iso(), "overrides": dict(overrides or {})}]
        run.update(config=saved.model_dump(mode="json"), resumes=resumes, status="running", error=None)
        ensure_tracking_store(saved)
        make_tracker(saved).reopen(state["mlflow_parent_run_id"])
    except BaseException:
        runlock.release(run)
        raise
    return RunRef(run_id=run_id, parent_run_id=state["mlflow_parent_run_id"], topics=state["topics"],
                  config=saved)


def pending_stages(ref: RunRef) -> list[str]:
    run = ref.run_dir()
    return [s for s in STAGES if run.stage_status(s) != DONE]


def finish_run(ref: RunRef, ok: bool, error: str | None = None) -> None:
    """Record how the run ended, and let go of its lock."""
    run = ref.run_dir()
    try:
        run.update(status="done" if ok else "failed", error=error)
        tracker = ref.tracker()
        if error:
            tracker.set_tags(ref.parent_run_id, {"lora_factory.error": error})
        tracker.end(ref.parent_run_id, "FINISHED" if ok else "FAILED")
    finally:
        runlock.release(run)
