"""Inside a flow run, each Dask batch is a Prefect task run of that flow run (``runtime.executor:
dask``), named after its batch function, so the Prefect UI shows the batches; results come back in
batch order. The flow runs on Prefect's temporary server: the workers must report to it."""

from __future__ import annotations

import pytest
from prefect import flow

from lora_factory.config import RuntimeConfig
from lora_factory.scaleout import close_runners, mapper_for

DASK = RuntimeConfig(executor="dask", dask_workers=2)

pytestmark = pytest.mark.timeout(2400)  # worker processes import Prefect: slow on a loaded machine


@flow(name="scaleout-batches")
def map_in_a_flow() -> tuple[str, list[int]]:
    from prefect.runtime import flow_run

    mapper = mapper_for(DASK)
    assert mapper is not None
    return str(flow_run.id), mapper(sum, [[1, 2], [3], [4, 5, 6]])


def test_batches_are_task_runs_of_the_flow_run() -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    try:
        flow_run_id, results = map_in_a_flow()
    finally:
        close_runners()
    assert results == [3, 3, 15]
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    batches = sorted(r.name for r in runs if r.name.startswith("sum ["))
    assert batches == ["sum [1/3]", "sum [2/3]", "sum [3/3]"]
    assert all(r.state is not None and r.state.is_completed() for r in runs if r.name in batches)
