"""``config`` and ``profiles``: what a run would be configured with."""

from __future__ import annotations

import typer
import yaml

from lora_factory.errors import FactoryError
from lora_factory.profiles import available_profiles, load_config
from lora_factory.secrets import redact

from .common import ProfileOpt, SeedsOpt, SetOpt, fail, overrides


def config(profile: ProfileOpt = "tiny", sets: SetOpt = None, seeds: SeedsOpt = None) -> None:
    """Print the resolved settings of a profile with overrides (and a seed file) applied
    (credentials in URLs show as ``***``)."""
    try:
        cfg = load_config(profile, overrides(sets, seeds=seeds))
    except FactoryError as e:
        fail(e)
    typer.echo(yaml.safe_dump(redact(cfg.model_dump(mode="json")), sort_keys=False))


def profiles() -> None:
    """List the available profiles."""
    typer.echo("\n".join(available_profiles()))
