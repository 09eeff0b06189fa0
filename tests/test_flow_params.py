"""The flow's parameters are typed: Prefect rejects bad ones before a run starts, and the
deployment's parameter schema (what the Prefect UI's run form shows) carries the bounds."""

from __future__ import annotations

from pathlib import Path

import pytest
from prefect.exceptions import ParameterTypeError
from prefect.utilities.callables import parameter_schema

from flows.factory import build_overrides, lora_factory
from lora_factory.textfiles import read_topics_file


@pytest.mark.parametrize("bad", [{"max_pages": 0}, {"max_images": -3}, {"topics": ["ok", ""]},
                                 {"concept": ""}, {"topics": "lighthouse"}, {"max_pages": "many"}])
def test_prefect_rejects_bad_parameters_before_the_run(bad: dict) -> None:
    with pytest.raises(ParameterTypeError):
        lora_factory.validate_parameters({"topics": ["lighthouse"], **bad})


def test_good_parameters_pass_and_become_overrides() -> None:
    params = lora_factory.validate_parameters({"topics": ["rock & roll"], "concept": "lighthouses",
                                               "max_pages": 5, "overrides": {"train.rank": 8}})
    assert params["topics"] == ["rock & roll"]
    assert build_overrides(params["max_pages"], None, params["overrides"], params["concept"]) == {
        "train.rank": 8, "crawl.max_pages": 5, "deploy.concept": "lighthouses"}


def test_the_schema_shows_the_bounds() -> None:
    schema = parameter_schema(lora_factory).model_dump()["properties"]
    assert set(schema) >= {"topics", "profile", "concept", "max_pages", "max_images", "topics_file", "overrides"}
    assert '"minimum": 1' in str(schema["max_pages"]).replace("'", '"')


def test_a_topics_file_reads_lines_or_yaml(tmp_path: Path) -> None:
    (tmp_path / "t.txt").write_text("lighthouse\nsailboat\n")
    (tmp_path / "t.yaml").write_text("topics: [lighthouse, 'rock & roll']\n")
    assert read_topics_file(tmp_path / "t.txt") == ["lighthouse", "sailboat"]
    assert read_topics_file(tmp_path / "t.yaml") == ["lighthouse", "rock & roll"]
