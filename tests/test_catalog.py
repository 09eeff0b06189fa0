"""The stage catalog: contracts between stages are declared once and enforced.

Imports point one way (cli -> flows -> tasks -> spiders/training/deploy -> lora_factory), no
stage module imports another stage's, stage output file names live only in the catalog, a stage
whose input is missing stops with one line, a stage must write what it declares, and
``lora-factory dag`` shows every edge.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path, PurePosixPath

import pytest

from lora_factory import catalog
from lora_factory.catalog import (
    CRAWL_ITEMS,
    CURATE_DATASET,
    CURATE_STATS,
    LABEL_CAPTION_STATS,
    TUNE_RATIONALE,
    TUNE_TRAIN_CONFIG,
    CatalogError,
    Output,
    StageSpec,
)
from lora_factory.catalog_formats import Json
from lora_factory.config import TrainConfig
from lora_factory.context import RunRef, StageContractError, run_stage
from lora_factory.errors import StageError
from lora_factory.home import run_store_for
from lora_factory.profiles import load_config
from lora_factory.runstore import DONE, FAILED, PENDING
from lora_factory.schemas import CaptionStats

ROOT = Path(__file__).resolve().parent.parent
CLI = Path(sys.executable).parent / "lora-factory"

# Which top-level packages each layer may import (besides itself and third-party packages).
ALLOWED = {
    "lora_factory": set(),
    "spiders": {"lora_factory"},
    "training": {"lora_factory"},
    "datatools": {"lora_factory"},
    "deploy": {"lora_factory", "training"},
    "tasks": {"lora_factory", "spiders", "training", "datatools", "deploy"},
    "flows": {"lora_factory", "spiders", "training", "datatools", "deploy", "tasks"},
    "cli": {"lora_factory", "spiders", "training", "datatools", "deploy", "tasks", "flows"},
}
# Stage output names are spelled only in the catalog. training/ is a library that writes the
# standard LoRA layout into whatever folder it is given, so it is not scanned.
NAME_SCANNED = ("lora_factory", "spiders", "datatools", "tasks", "flows", "deploy", "cli")


def _modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def _imports(path: Path) -> list[str]:
    """Absolute module names imported by ``path`` (relative imports resolved), lazy ones too."""
    parts = list(path.relative_to(ROOT).parts[:-1])  # the module's package
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = parts[: len(parts) - node.level + 1] if node.level > 1 else parts
                mod = ".".join([*base, node.module] if node.module else base)
                names += [f"{mod}.{a.name}" if not node.module else mod for a in node.names]
            elif node.module:
                names.append(node.module)
    return names


def _stage_of(module: str) -> str | None:
    """``tasks.curate.stage`` -> ``curate``; shared helpers (``tasks._text``) are no stage."""
    parts = module.split(".")
    if parts[0] != "tasks" or len(parts) < 2 or parts[1].startswith("_"):
        return None
    return parts[1]


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_imports_point_down_the_layers(layer: str) -> None:
    wrong = []
    for path in _modules(layer):
        for name in _imports(path):
            top = name.split(".")[0]
            if top in ALLOWED and top != layer and top not in ALLOWED[layer]:
                wrong.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not wrong, wrong


def test_no_stage_module_imports_another_stage() -> None:
    wrong = []
    for path in _modules("tasks"):
        own = _stage_of(".".join(path.relative_to(ROOT).with_suffix("").parts))
        for name in _imports(path):
            other = _stage_of(name)
            if other is not None and other != own:
                wrong.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not wrong, wrong


def _path_literals(path: Path, names: set[str]) -> list[str]:
    """String constants in ``path`` that spell a stage output's file name (``x.parquet``) or
    join an output folder onto a path (``out / "lora"``)."""
    hits = []
    tree = ast.parse(path.read_text())
    joined = {id(n.right) for n in ast.walk(tree) if isinstance(n, ast.BinOp) and isinstance(n.op, ast.Div)}
    for node in ast.walk(tree):
        spelled = isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in names
        if spelled and (PurePosixPath(node.value).suffix or id(node) in joined):
            hits.append(f"{path.name}:{node.lineno} {node.value!r}")
    return hits


def test_stage_output_names_appear_only_in_the_catalog() -> None:
    names = {PurePosixPath(o.path).name for o in catalog.OUTPUTS.values()}
    hits = []
    for package in NAME_SCANNED:
        for path in _modules(package):
            if path.name != "catalog.py":
                hits += [f"{path.parent.relative_to(ROOT)}/{h}" for h in _path_literals(path, names)]
    assert not hits, hits


def test_the_scan_would_find_a_spelled_out_name(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text('from pathlib import Path\nA = Path("x") / "lora"\nB = "eval.json"\nC = {"lora": 1}\n')
    assert sorted(_path_literals(probe, {"lora", "eval.json"})) == ["probe.py:2 'lora'", "probe.py:3 'eval.json'"]


def test_catalog_order_respects_every_declared_read() -> None:
    position = {s: i for i, s in enumerate(catalog.STAGES)}
    for producer, consumer, _out in catalog.edges():
        assert position[producer] < position[consumer]
    from flows.factory import STAGE_TASKS

    assert set(STAGE_TASKS) == set(catalog.STAGES)


def test_contradicting_declarations_are_caught() -> None:
    a = Output("a", "x", "x.json", Json(), "")
    b = Output("b", "y", "y.json", Json(), "")
    with pytest.raises(CatalogError, match="cycle"):
        catalog._topological([StageSpec("a", "", reads=(b,), writes=(a,)), StageSpec("b", "", reads=(a,), writes=(b,))])
    with pytest.raises(CatalogError, match="which no stage writes"):
        catalog._validate((StageSpec("b", "", reads=(a,), writes=(b,)),))
    with pytest.raises(CatalogError, match="unknown external inputs"):
        catalog._validate((StageSpec("a", "", writes=(a,), external=("registry.nothing",)),))
    assert catalog._topological([StageSpec("b", "", reads=(a,), writes=(b,)), StageSpec("a", "", writes=(a,))]) == ("a", "b")
    assert catalog.downstream("tune") == ["tune", "train", "evaluate", "deploy"]


def test_dag_command_lists_every_edge(tmp_path: Path) -> None:
    proc = subprocess.run([str(CLI), "dag"], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    edges = {line.strip() for line in proc.stdout.split("edges", 1)[1].splitlines()[1:] if line.strip()}
    expected = {f"{o.stage} -> {spec.name}: {o.key}" for spec in catalog.SPECS for o in spec.reads}
    assert edges == expected and len(expected) >= 10
    for out in catalog.OUTPUTS.values():
        assert out.run_path in proc.stdout


@pytest.fixture
def run_ref(tmp_path: Path) -> RunRef:
    cfg = load_config("tiny", {"home": str(tmp_path / "home")}, environ={})
    run = run_store_for(cfg).create(["fox"], "tiny", cfg.model_dump(mode="json"))
    return RunRef(run_id=run.run_id, parent_run_id="none", topics=["fox"], config=cfg)


def test_a_stage_whose_input_is_missing_stops_with_one_line(run_ref: RunRef) -> None:
    with pytest.raises(StageError) as e, run_stage(run_ref, "curate"):
        pytest.fail("the stage body must not run")
    line = str(e.value)
    assert "\n" not in line
    assert "curate cannot start: crawl/items.parquet (crawl.items) is missing: stage 'crawl' makes it and is pending" in line
    run = run_ref.run_dir()
    assert run.stage_status("curate") == FAILED and run.state()["stages"]["curate"]["error"] == line

    # The producing stage is marked done but its file is gone: name it and what to re-run.
    run.set_stage("crawl", DONE)
    Path(run.store.local_path(f"{run.key}/crawl")).mkdir(parents=True)
    with pytest.raises(StageError, match=r"crawl/items.parquet \(crawl.items\) is missing although stage 'crawl' is done: re-run 'crawl'"), \
            run_stage(run_ref, "curate"):
        pytest.fail("the stage body must not run")


def _done_tune_inputs(run_ref: RunRef) -> None:
    """curate and label done, with the statistics the tune stage reads."""
    run = run_ref.run_dir()
    CURATE_STATS.write(Path(run.store.local_path(f"{run.key}/curate")),
                       {"schema_version": 1, "num_images": 1, "caption_coverage": 1.0, "caption_words_mean": 1.0,
                        "caption_words_median": 1.0, "resolution_short_side_median": 64.0})
    LABEL_CAPTION_STATS.write(Path(run.store.local_path(f"{run.key}/label")),
                              CaptionStats(num_images=1, captioned=1, coverage=1.0, words_mean=1.0,
                                           words_median=1.0, words_max=1, trigger_word="tok"))
    run.set_stage("curate", DONE)
    run.set_stage("label", DONE)


def test_a_stage_must_write_what_it_declares_and_only_that(run_ref: RunRef) -> None:
    _done_tune_inputs(run_ref)
    with pytest.raises(StageContractError, match=r"stage 'tune' did not write tune/rationale.md"), \
            run_stage(run_ref, "tune") as st:
        assert st.read(LABEL_CAPTION_STATS).num_images == 1 and st.read(CURATE_STATS).schema_version == 1
        st.write(TUNE_TRAIN_CONFIG, TrainConfig())
    run = run_ref.run_dir()
    assert run.stage_status("tune") == FAILED
    assert not Path(run.store.local_path(f"{run.key}/tune")).exists()  # nothing half-written

    with pytest.raises(StageContractError, match="reads curate.dataset without declaring it"), \
            run_stage(run_ref, "tune") as st:
        st.read(CURATE_DATASET)
    with pytest.raises(StageContractError, match="writes crawl.items without declaring it"), \
            run_stage(run_ref, "tune") as st:
        st.write(CRAWL_ITEMS, [])

    with run_stage(run_ref, "tune") as st:
        st.write(TUNE_TRAIN_CONFIG, TrainConfig(rank=8))
        st.write(TUNE_RATIONALE, "rank 8: test")
    assert run.stage_status("tune") == DONE
    assert TUNE_TRAIN_CONFIG.read(run.stage_path("tune")).rank == 8
    assert run.stage_status("train") == PENDING
