"""The optional Hugging Face Hub push: off by default, one line without a token, and the upload
itself with huggingface_hub's HfApi against a loopback stand-in of the hub's upload API
(HF_ENDPOINT); the token reaches the hub's Authorization header and nothing else. The deploy
stage's push (and that the token is nowhere in MLflow, decision.json, logs or the home) is
tested in test_deploy_stage, on the deploy run that test makes anyway."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from deploy.hub import HubPushError, hub_token, push_lora
from lora_factory.profiles import load_config

from .hub_server import fake_hub, go_online

TOKEN = "hf_test_token_0123456789abcdefXYZ"


@pytest.fixture()
def online(monkeypatch: pytest.MonkeyPatch) -> None:
    go_online(monkeypatch)


def test_the_push_is_off_by_default() -> None:
    export = load_config("tiny", {}, environ={}).deploy.export
    assert export.hub_repo == "" and export.hub_token_env == "HF_TOKEN" and export.hub_private


def test_a_missing_token_is_one_line() -> None:
    with pytest.raises(HubPushError) as err:
        hub_token("HF_TOKEN", environ={"HF_TOKEN": "  "})
    assert str(err.value) == ("deploy.export.hub_repo is set but $HF_TOKEN is empty: export a Hugging Face "
                              "write token in it, or clear deploy.export.hub_repo")
    assert hub_token("MY_HF", environ={"MY_HF": TOKEN}) == TOKEN


def test_offline_mode_stops_the_push_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HubPushError, match="^deploy.export.hub_repo is set but HF_HUB_OFFLINE is on: unset"):
        hub_token("HF_TOKEN")


@pytest.mark.usefixtures("online")
def test_push_uploads_the_lora_files_and_card(tiny_lora: Path, monkeypatch: pytest.MonkeyPatch,
                                             caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with fake_hub() as (base, hub):
        monkeypatch.setenv("HF_ENDPOINT", base)
        url = push_lora(tiny_lora, "me/lighthouse-lora", TOKEN, True, "lighthouse v1 by lora-factory")
    assert url.startswith(f"{base}/me/lighthouse-lora/commit/")
    assert hub.created == [{"name": "lighthouse-lora", "organization": "me", "visibility": "private"}]
    assert hub.commit_messages == ["lighthouse v1 by lora-factory"]
    assert {"pytorch_lora_weights.safetensors", "README.md"} <= set(hub.files)
    assert not any(p.startswith("samples/") for p in hub.files)  # sample grids stay home
    for name, data in hub.files.items():
        assert data == (tiny_lora / name).read_bytes()
    writes = [h for m, _, h in hub.requests if m == "POST"]
    assert writes and all(h["authorization"] == f"Bearer {TOKEN}" for h in writes)
    assert TOKEN not in caplog.text


@pytest.mark.usefixtures("online")
def test_a_refused_push_is_one_line_without_the_token(tiny_lora: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with fake_hub() as (base, _):
        monkeypatch.setenv("HF_ENDPOINT", f"{base}/nowhere")  # every route 404s
        with pytest.raises(HubPushError) as err:
            push_lora(tiny_lora, "me/x", TOKEN, True, "m")
    assert "pushing to the Hugging Face Hub repo 'me/x' failed: " in str(err.value) and "404" in str(err.value)
    assert "\n" not in str(err.value) and TOKEN not in str(err.value)
