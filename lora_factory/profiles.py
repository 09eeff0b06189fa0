"""Load a ``FactoryConfig`` from a YAML profile, CLI overrides and ``LORA_FACTORY_*`` variables.

Precedence, lowest first: model defaults < profile YAML < environment < CLI overrides.
Environment variables use ``__`` for nesting: ``LORA_FACTORY_TRAIN__MAX_STEPS=5``.
Every problem becomes one ``ConfigError`` line naming the dotted key and what is allowed.
"""

from __future__ import annotations

import contextlib
import json
import os
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from .config import FactoryConfig, TrainConfig
from .errors import ConfigError
from .home import Home
from .textfiles import parse_user_yaml, read_user_text

ENV_PREFIX = "LORA_FACTORY_"
# Variables with the prefix that are not config keys (they steer the CLI or tests).
# The serve token and the LLM endpoints' default key variable (label.llm.api_key_env) are secrets,
# no config keys: read as overrides they stopped every command with "llm_api_key: unknown key".
ENV_RESERVED = {"LORA_FACTORY_CONFIG_DIR", "LORA_FACTORY_SERVE_TOKEN", "LORA_FACTORY_LLM_API_KEY"}


def profiles_dir() -> Path:
    """Where the YAML profiles live: $LORA_FACTORY_CONFIG_DIR or the checkout's configs/profiles."""
    env = os.environ.get("LORA_FACTORY_CONFIG_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent / "configs" / "profiles"


def available_profiles() -> list[str]:
    d = profiles_dir()
    return sorted(p.stem for p in d.glob("*.yaml")) if d.is_dir() else []


def _read_yaml(path: Path) -> dict[str, Any]:
    data = parse_user_yaml(read_user_text(path, "profile"), f"profile {path}") or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of settings, not {type(data).__name__}")
    return data


def load_profile_data(profile: str) -> dict[str, Any]:
    """The raw mapping of a profile name or a path to a YAML file."""
    candidate = Path(profile)
    if profile.endswith((".yaml", ".yml")) or candidate.is_file():
        if not candidate.is_file():
            raise ConfigError(f"profile file {profile} does not exist")
        data = _read_yaml(candidate)
    else:
        path = profiles_dir() / f"{profile}.yaml"
        if not path.is_file():
            names = ", ".join(available_profiles()) or "none found"
            raise ConfigError(
                f"unknown profile '{profile}': choose one of {names}, or pass a path to a YAML file"
            )
        data = _read_yaml(path)
    data.setdefault("profile", profile)
    return data


def parse_value(text: str) -> Any:
    """A CLI/env value as YAML scalar or list: ``5`` -> 5, ``[a, b]`` -> list, ``x`` -> 'x'."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _set_dotted(target: dict[str, Any], dotted: str, value: Any) -> None:
    parts = [p for p in dotted.split(".") if p]
    if not parts:
        raise ConfigError(f"override '{dotted}' has no key")
    node = target
    for part in parts[:-1]:
        nxt = node.get(part)
        if nxt is None:
            nxt = node[part] = {}
        elif not isinstance(nxt, dict):
            raise ConfigError(f"{dotted}: '{part}' is a value, not a section")
        node = nxt
    node[parts[-1]] = value


def env_var(dotted: str) -> str:
    """The environment variable of a setting: ``train.max_steps`` -> ``LORA_FACTORY_TRAIN__MAX_STEPS``."""
    return ENV_PREFIX + dotted.upper().replace(".", "__")


def env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    """``LORA_FACTORY_TRAIN__MAX_STEPS=5`` -> {"train.max_steps": 5}."""
    out: dict[str, Any] = {}
    for key, raw in environ.items():
        if not key.startswith(ENV_PREFIX) or key in ENV_RESERVED:
            continue
        dotted = key[len(ENV_PREFIX) :].lower().replace("__", ".")
        out[dotted] = parse_value(raw)
    return out


def parse_set_args(items: list[str]) -> dict[str, Any]:
    """CLI ``--set train.max_steps=5`` pairs -> {"train.max_steps": 5}."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set '{item}' must look like section.key=value")
        out[key.strip()] = parse_value(raw)
    return out


def _allowed(model: type[BaseModel], loc: tuple[Any, ...]) -> str:
    """The allowed keys at ``loc`` (for unknown-key errors)."""
    cls: Any = model
    for part in loc[:-1]:
        field = cls.model_fields.get(part) if isinstance(part, str) else None
        if field is None:
            return ""
        ann = field.annotation
        args = [a for a in typing.get_args(ann) if isinstance(a, type)] or [ann]
        cls = next((a for a in args if isinstance(a, type) and issubclass(a, BaseModel)), None)
        if cls is None:
            return ""
    return ", ".join(cls.model_fields)


def format_validation_error(err: ValidationError, source: str) -> str:
    """One line: ``<source>: train.rank: Input should be greater than or equal to 1 (got 0)``."""
    parts = []
    for e in err.errors():
        loc = tuple(e["loc"])
        dotted = ".".join(str(p) for p in loc)
        if e["type"] == "extra_forbidden":
            allowed = _allowed(FactoryConfig, loc)
            parts.append(f"{dotted}: unknown key (allowed: {allowed})")
        else:
            got = e.get("input")
            got_s = "" if isinstance(got, dict) else f" (got {got!r})"
            parts.append(f"{dotted}: {e['msg']}{got_s}")
    return f"config error in {source}: " + "; ".join(parts)


def load_config(
    profile: str = "tiny",
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> FactoryConfig:
    """Build the run's config. ``overrides`` are dotted keys (from CLI flags or flow params)."""
    data = load_profile_data(profile)
    env = env_overrides(os.environ if environ is None else environ)
    return config_from_data(data, [env, dict(overrides or {})], f"profile '{profile}' with overrides")


def config_from_data(
    data: dict[str, Any], layers: list[Mapping[str, Any]], source: str
) -> FactoryConfig:
    """Apply dotted-key ``layers`` (lowest first) to ``data`` and validate it."""
    data = json.loads(json.dumps(data))  # a deep copy the layers can change
    for layer in layers:
        for dotted, value in layer.items():
            _set_dotted(data, dotted, value)
    _record_pins(data, layers)
    try:
        cfg = FactoryConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, source)) from None
    return finalize(cfg)


def pinned_train_keys(layers: list[Mapping[str, Any]]) -> set[str]:
    """The ``train`` keys a layer of overrides sets explicitly (``train.rank`` -> ``rank``)."""
    keys: set[str] = set()
    for layer in layers:
        for dotted, value in layer.items():
            parts = [p for p in dotted.split(".") if p]
            if parts[:1] == ["train"]:
                if len(parts) > 1:
                    keys.add(parts[1])
                elif isinstance(value, dict):
                    keys.update(value)
    return keys


def _record_pins(data: dict[str, Any], layers: list[Mapping[str, Any]]) -> None:
    """Add the explicitly overridden train keys to ``tune.pin``, so the tuner keeps them (the
    profile's own train values stay the tuner's to change). Unknown keys and a malformed ``tune``
    section are left for validation to report."""
    pins = pinned_train_keys(layers) & set(TrainConfig.model_fields)
    tune = data.setdefault("tune", {})
    if pins and isinstance(tune, dict):
        existing = tune.get("pin") or []
        tune["pin"] = sorted(set(existing if isinstance(existing, list) else []) | pins)


def finalize(cfg: FactoryConfig) -> FactoryConfig:
    """Fill the defaults that depend on the machine: home, store root, tracking URI."""
    home = Path(cfg.home or "./lora-factory-data").expanduser().resolve()
    cfg.home = str(home)
    if not cfg.store.root:
        cfg.store.root = str(home)
    elif "://" not in cfg.store.root:
        cfg.store.root = str(Path(cfg.store.root).expanduser().resolve())
    if not cfg.tracking.uri:
        cfg.tracking.uri = f"sqlite:///{Home(home).mlflow_db}"
    _local_base_family(cfg, Home(home).models)
    return cfg


def _local_base_family(cfg: FactoryConfig, models_dir: Path) -> None:
    """Fill ``models.base_family`` from a ``tiny:`` or local base model (no network, nothing
    built), so every stage sees it; hub models get it in preflight, and any problem is left for
    preflight and the train stage to report."""
    from .errors import ModelUnavailableError
    from .models.families import detect_family
    from .models.refs import parse_ref

    with contextlib.suppress(ModelUnavailableError, ValueError):  # preflight reports it in one line
        if cfg.models.base_family is None and parse_ref(cfg.models.base).kind != "hub":
            cfg.models.base_family = detect_family(cfg.models.base, models_dir)  # type: ignore[assignment]


def location_config(
    overrides: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None
) -> FactoryConfig:
    """Settings for commands that only read runs (``runs``, ``explain``, ``ui``): where the home,
    store and tracking store are. No profile is involved: they describe runs, not make them."""
    env = env_overrides(os.environ if environ is None else environ)
    return config_from_data({}, [env, dict(overrides or {})], "settings")
