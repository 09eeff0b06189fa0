"""Optional Hugging Face Hub push of a promoted LoRA (``deploy.export.hub_repo``; off when empty).

The adapter folder's weights (diffusers and kohya files), training args and model card
(``README.md``) go to a model repo with ``huggingface_hub``'s ``HfApi.upload_folder``, in one
commit. The write token is read from the environment variable named by
``deploy.export.hub_token_env`` (``HF_TOKEN``) at push time and handed to ``HfApi`` only: config,
decision.json, MLflow and logs hold the variable's name, never its value. ``HF_ENDPOINT`` (the
library's own setting) points the push at another hub (a mirror, or a test server).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from lora_factory.errors import FactoryError
from lora_factory.secrets import MASK
from training.save import MODEL_CARD_NAME

ALLOW = ["*.safetensors", MODEL_CARD_NAME, "*.json"]  # weights, card, training args; not the sample grids


class HubPushError(FactoryError):
    """The push cannot start (no token) or the hub refused it."""


def hub_token(token_env: str, environ: Mapping[str, str] | None = None) -> str:
    """The write token; checked when deploy starts too, so a push that cannot happen stops the
    stage before anything is registered. Offline mode (HF_HUB_OFFLINE) would refuse it as well."""
    from lora_factory.models.hub import hub_offline

    token = (os.environ if environ is None else environ).get(token_env, "").strip()
    if not token:
        raise HubPushError(f"deploy.export.hub_repo is set but ${token_env} is empty: export a Hugging Face "
                           "write token in it, or clear deploy.export.hub_repo")
    if environ is None and hub_offline():
        raise HubPushError("deploy.export.hub_repo is set but HF_HUB_OFFLINE is on: unset it for the push, "
                           "or clear deploy.export.hub_repo")
    return token


def push_lora(lora_dir: Path, repo_id: str, token: str, private: bool, message: str) -> str:
    """Create ``repo_id`` if needed and upload the adapter folder; returns the commit URL."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None, token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        commit = api.upload_folder(repo_id=repo_id, folder_path=str(lora_dir), allow_patterns=ALLOW,
                                   commit_message=message)
    except (HfHubHTTPError, OSError, ValueError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0].replace(token, MASK)
        raise HubPushError(f"pushing to the Hugging Face Hub repo {repo_id!r} failed: {first}") from None
    return str(commit.commit_url)
