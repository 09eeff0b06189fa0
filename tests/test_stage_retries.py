"""Stage tasks retry transient failures (a service not answering) and nothing else."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request

import pytest
import requests
from mlflow.exceptions import MlflowException
from prefect.states import Completed, Failed

from lora_factory.errors import StageError, TrackingError
from tasks._prefect import RETRY_DELAYS_S, TRANSIENT_RETRIES, is_transient, retry_if_transient


def refused() -> BaseException:
    """A real refused connection: a loopback port nobody listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5)
    except urllib.error.URLError as e:
        return e
    raise AssertionError("the closed port answered")


def raised_during(outer: BaseException, inner: BaseException, suppress: bool = False) -> BaseException:
    try:
        try:
            raise inner
        except BaseException:
            if suppress:
                raise outer from None
            raise outer  # noqa: B904 - implicit context, as in library code
    except BaseException as e:  # noqa: BLE001
        return e


def http_error(code: int) -> urllib.error.HTTPError:
    return urllib.error.HTTPError("http://127.0.0.1/", code, "status", {}, None)  # type: ignore[arg-type]


def test_services_that_did_not_answer_are_transient() -> None:
    assert is_transient(refused())
    assert is_transient(http_error(503)) and is_transient(http_error(429))
    assert is_transient(raised_during(MlflowException("API request failed"), requests.exceptions.ConnectionError()))
    assert is_transient(TimeoutError("read timed out"))


def test_mistakes_and_user_errors_are_not() -> None:
    assert not is_transient(http_error(404)) and not is_transient(http_error(401))
    assert not is_transient(ValueError("bad value"))
    assert not is_transient(StageError("no images left after curation"))
    assert not is_transient(raised_during(TrackingError("server refused"), ConnectionRefusedError()))
    assert not is_transient(raised_during(KeyError("x"), ConnectionRefusedError(), suppress=True))


@pytest.mark.parametrize(("error", "retried"), [(ConnectionRefusedError("refused"), True),
                                                (StageError("nothing to train on"), False)])
def test_every_stage_task_retries_only_a_transient_failure(error: BaseException, retried: bool) -> None:
    """Prefect asks ``retry_condition_fn`` with the failed state; the stage tasks all carry it.
    (Prefect's retry loop itself is Prefect's: running a flow here costs an API server start.)"""
    from flows.factory import STAGE_TASKS

    for stage, stage_task_ in STAGE_TASKS.items():
        assert stage_task_.retries == TRANSIENT_RETRIES and stage_task_.retry_condition_fn is retry_if_transient, stage
        assert stage_task_.retry_delay_seconds == RETRY_DELAYS_S
    assert retry_if_transient(None, None, Failed(data=error)) is retried
    assert retry_if_transient(None, None, Completed(data="ok")) is False
