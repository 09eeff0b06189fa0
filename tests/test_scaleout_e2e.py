"""A whole factory run with ``runtime.executor=dask`` through the real CLI (issue 15, scale-out).

One crawl of the demo site (stopped at curation by a bad setting), its home copied, then both
copies resumed with the setting fixed: one in process, one on a local Dask cluster of 2 workers.
Curate, label and evaluate run in each from the same crawl, so their outputs must be the same;
the Dask run's batches are Prefect task runs of its flow run on the session's Prefect server.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

CLI = Path(sys.executable).parent / "lora-factory"
# A small crawl, 4 training steps, one seed per prompt and no efficiency timings: three runs stay short.
SMALL = ["-t", "lighthouse", "--max-images", "16", "--set", "train.max_steps=4", "--set", "evaluate.num_seeds=1",
         "--set", "evaluate.efficiency_images=0"]
DASK = ["--set", "runtime.executor=dask", "--set", "runtime.dask_workers=2", "--set", "runtime.batch_items=4",
        "--set", f"runtime.dask_torch_threads={torch.get_num_threads()}"]
TEXT = {".json", ".jsonl", ".txt", ".toml", ".md", ".yaml"}
BATCH_TASKS = {"measure_batch", "caption_batch", "embed_batch", "render_batch"}

# A crawl and two tiny runs (about 5 minutes on an idle machine): `make test-slow`, not `make test`.
pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(7200)]


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(CLI), *args], cwd=cwd, capture_output=True, text=True, timeout=3600)


def _normalised(path: Path, home: Path) -> bytes:
    """A file's content with its home's path written as ``<home>`` (the two runs have two homes):
    rows of a parquet file, text as text, other files as their bytes."""
    if path.suffix == ".parquet":
        text = json.dumps(pq.read_table(path).to_pylist(), sort_keys=True, default=str)
    elif path.suffix in TEXT:
        text = path.read_text(encoding="utf-8")
    else:
        return path.read_bytes()
    return text.replace(str(home), "<home>").encode()


def _contents(folder: Path, home: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): _normalised(p, home) for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("dask-e2e")
    local_home, dask_home = tmp / "local", tmp / "dask"
    run_cli("run", *SMALL, "--home", str(local_home), "--set", "curate.min_side=100000", cwd=tmp)
    runs = sorted((local_home / "runs").iterdir())
    assert len(runs) == 1
    run_id = runs[0].name
    shutil.copytree(local_home, dask_home)
    done = {}
    for name, home, extra in (("local", local_home, []), ("dask", dask_home, DASK)):
        started = datetime.now(UTC)
        proc = run_cli("run", "--resume", run_id, "--home", str(home), "--set", "curate.min_side=64", *extra, cwd=tmp)
        done[name] = {"proc": proc, "run_dir": home / "runs" / run_id, "home": home,
                      "between": (started, datetime.now(UTC))}
    return done


def test_the_dask_run_completes(two_runs: dict) -> None:
    for name in ("local", "dask"):
        proc, run_dir = two_runs[name]["proc"], two_runs[name]["run_dir"]
        assert proc.returncode == 0, f"{name}: {proc.stderr[-3000:]}"
        state = json.loads((run_dir / "run.json").read_text())
        assert all(s["status"] == "done" for s in state["stages"].values()), state["stages"]


def test_curate_label_and_evaluate_outputs_equal_the_local_run(two_runs: dict) -> None:
    (local, local_home), (dask, dask_home) = ((two_runs[n]["run_dir"], two_runs[n]["home"]) for n in ("local", "dask"))
    for folder in ("curate/embeddings", "label/dataset", "evaluate/images"):
        files = _contents(local / folder, local_home)
        assert files, folder
        assert _contents(dask / folder, dask_home) == files, folder
    for name in ("curate/dataset.parquet", "curate/rejected.parquet", "label/labels.parquet", "evaluate/grid.png"):
        assert _normalised(dask / name, dask_home) == _normalised(local / name, local_home), name
    evals = [json.loads(_normalised(d / "evaluate" / "eval.json", h)) for d, h in ((local, local_home), (dask, dask_home))]
    for e in evals:
        e.pop("efficiency", None)  # wall-clock seconds and memory: never equal twice
    assert evals[0]["scores"] and evals[1] == evals[0]


def test_the_dask_batches_are_prefect_task_runs_of_its_flow_run(two_runs: dict, prefect_server: str) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterStartTime,
        TaskRunFilter,
        TaskRunFilterName,
    )
    from prefect.settings import PREFECT_API_URL, temporary_settings

    names = {}
    with temporary_settings({PREFECT_API_URL: prefect_server}), get_client(sync_client=True) as client:
        for name in ("local", "dask"):
            after, before = two_runs[name]["between"]  # the resumed flow run started in this window
            window = FlowRunFilter(start_time=FlowRunFilterStartTime(after_=after, before_=before))
            assert len(client.read_flow_runs(flow_run_filter=window)) == 1
            tasks = client.read_task_runs(flow_run_filter=window,
                                          task_run_filter=TaskRunFilter(name=TaskRunFilterName(like_="_batch [")))
            names[name] = {t.name.split(" [")[0] for t in tasks if t.state is not None and t.state.is_completed()}
    assert names == {"local": set(), "dask": BATCH_TASKS}
