"""The doctor's optional narrative (``inspect --narrative`` / ``doctor.narrative``): written by the
label stage's LLM endpoint (a real OpenAI-compatible server on loopback, tests/chat_server.py)
into doctor.json and doctor.html; an unreachable endpoint costs one warning line, not the report;
the API key only ever travels in the request's header."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.app import app
from lora_factory.errors import ConfigError
from lora_factory.profiles import load_config
from lora_factory.schemas import DoctorReport

from .chat_server import Reply, closed_port_url, serve_chat
from .doctor_data import FOLDER, TRIGGER, clean_folder

KEY = "sk-doctor-9f8e7d6c5b4a-never-written"
PARAGRAPH = "```\nSix images,\none without a caption: <caption it> first.\n```"


@pytest.fixture
def home(model_cache: Path, tmp_path: Path) -> Path:
    """A fresh home (so no cached answer) on the session's tiny models."""
    h = tmp_path / "home"
    h.mkdir()
    (h / "models").symlink_to(model_cache)
    return h


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    root = tmp_path / "ds"
    clean_folder(root, 6)
    (root / FOLDER / "clean_02.txt").unlink()  # a finding for the paragraph to talk about
    return root


def inspect(ds: Path, out: Path, home: Path, url: str, *extra: str) -> tuple[int, str, str]:
    argv = ["inspect", str(ds), "--concept", "shapes on a gradient", "--trigger", TRIGGER, "--out", str(out),
            "--home", str(home), "--set", "train.resolution=256", "--set", "train.batch_size=2",
            "--set", f"label.llm.base_url={url}", "--set", "label.llm.model=test-model",
            "--set", "label.llm.max_retries=0", *extra]
    result = CliRunner().invoke(app, argv, env={"LORA_FACTORY_LLM_API_KEY": KEY})
    return result.exit_code, result.stdout, result.stderr


def test_the_narrative_comes_from_the_label_llm_into_json_and_html(tmp_path: Path, home: Path, dataset: Path) -> None:
    with serve_chat(lambda body, n: Reply(content=PARAGRAPH)) as server:
        code, out, err = inspect(dataset, tmp_path / "plain", home, server.url)  # off by default
        assert code == 0, out + err
        assert server.bodies == []
        assert DoctorReport.model_validate_json((tmp_path / "plain" / "doctor.json").read_text()).narrative is None

        code, out, err = inspect(dataset, tmp_path / "rep", home, server.url, "--narrative")
    assert code == 0, out + err
    report = DoctorReport.model_validate_json((tmp_path / "rep" / "doctor.json").read_text())
    assert report.narrative == "Six images, one without a caption: <caption it> first."  # one paragraph
    page = (tmp_path / "rep" / "doctor.html").read_text()
    assert "one without a caption: &lt;caption it&gt; first." in page  # escaped, in the dashboard
    assert f"summary: {report.narrative}" in out
    # one request, with the findings and scores but no file names; the key only in its header
    assert len(server.bodies) == 1 and server.bodies[0]["model"] == "test-model"
    asked = server.bodies[0]["messages"][-1]["content"]
    missing = next(f for f in report.findings if f.code == "missing_caption")
    assert missing.title in asked and missing.fix in asked and "relevance" in asked
    assert "clean_02" not in asked and str(dataset) not in asked
    assert server.authorization == [f"Bearer {KEY}"]
    written = [p.read_text() for p in (tmp_path / "rep").iterdir()] + [out, err]
    written += [p.read_text() for p in (home / "cache").rglob("*.json")]
    assert not any(KEY in text for text in written)


def test_an_unreachable_endpoint_leaves_the_report_and_one_warning(tmp_path: Path, home: Path, dataset: Path) -> None:
    url = closed_port_url()
    code, out, err = inspect(dataset, tmp_path / "rep", home, url, "--narrative")
    assert code == 0, out + err
    report = DoctorReport.model_validate_json((tmp_path / "rep" / "doctor.json").read_text())
    assert report.narrative is None and report.findings  # the report is whole
    assert "Summary" not in (tmp_path / "rep" / "doctor.html").read_text()
    warnings = [line for line in (out + err).splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "no narrative" in warnings[0] and url in warnings[0]
    assert KEY not in out + err


def test_the_narrative_needs_the_endpoint_model() -> None:
    with pytest.raises(ConfigError, match="doctor.narrative is on but label.llm.model is empty"):
        load_config("tiny", {"doctor.narrative": True}, environ={})
