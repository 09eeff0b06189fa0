"""What can be checked of the infrastructure without a container engine: the compose file, the
worker Dockerfile and the Kubernetes job template parse and refer to things that exist."""

from __future__ import annotations

import json
import re
import shlex
import sys
import tomllib
from pathlib import Path

import yaml

from lora_factory.profiles import env_overrides, load_config

ROOT = Path(__file__).resolve().parent.parent
INFRA = ROOT / "infra"
BIN = Path(sys.executable).parent


def _compose() -> dict:
    return yaml.safe_load((INFRA / "compose.yaml").read_text())


def _dockerfile_copies() -> list[str]:
    copied: list[str] = []
    for line in (INFRA / "Dockerfile").read_text().splitlines():
        if line.startswith("COPY "):
            copied += shlex.split(line)[1:-1]
    return copied


def test_the_image_copies_every_package_and_installs_the_lock_like_the_readme() -> None:
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    copied = _dockerfile_copies()
    missing = [p.rstrip("*") for p in packages if p.rstrip("*") not in copied]
    assert not missing, f"infra/Dockerfile does not COPY {missing}"
    for needed in ("requirements.lock", "pyproject.toml", "Makefile", "configs", "prefect.yaml"):
        assert needed in copied
    assert all((ROOT / c).exists() for c in copied)
    text = (INFRA / "Dockerfile").read_text()
    assert "RUN make install" in text  # the same locked install (uv pip sync requirements.lock)
    assert "make test" in (ROOT / "README.md").read_text()
    assert "uv pip sync" in (ROOT / "Makefile").read_text()


def test_compose_services_refer_to_what_exists() -> None:
    compose = _compose()
    services = compose["services"]
    host_ports: list[str] = []
    for name, svc in services.items():
        assert "image" in svc or "build" in svc, name
        if "build" in svc:
            assert (INFRA / svc["build"]["context"] / svc["build"]["dockerfile"]).is_file()
        deps = svc.get("depends_on", {})
        assert all(d in services for d in deps), (name, deps)
        host_ports += [p.split(":")[0] for p in svc.get("ports", [])]
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (INFRA / source).exists(), (name, source)
            else:
                assert source in compose["volumes"], (name, source)
    assert len(host_ports) == len(set(host_ports)), host_ports
    # The commands our image runs are installed in it (the same venv as here).
    for name in ("mlflow", "prefect", "worker", "deployments"):
        entry = services[name]["entrypoint"]
        program = entry[0] if entry[0] != "/bin/sh" else services[name]["command"][0].split()[0]
        assert (BIN / program).exists(), (name, program)


def test_compose_factory_settings_are_real_settings() -> None:
    """Every LORA_FACTORY_* variable the services set is a valid setting of the factory."""
    compose = _compose()
    env = {k: re.sub(r"\$\{[^:}]+:-([^}]*)\}", r"\1", str(v))
           for svc in compose["services"].values() for k, v in (svc.get("environment") or {}).items()
           if k.startswith("LORA_FACTORY_")}
    assert {"LORA_FACTORY_TRACKING__URI", "LORA_FACTORY_STORE__ROOT", "LORA_FACTORY_CRAWL__REDIS_URL"} <= set(env)
    cfg = load_config("tiny", environ=env)
    assert cfg.tracking.uri == "http://mlflow:5000" and cfg.store.root == "s3://lora-factory/store"
    assert set(env_overrides(env)) == {k.removeprefix("LORA_FACTORY_").lower().replace("__", ".") for k in env}
    mlflow = " ".join(compose["services"]["mlflow"]["entrypoint"])
    assert "postgresql://" in mlflow and "--artifacts-destination s3://mlflow" in mlflow
    assert "CREATE DATABASE mlflow" in (INFRA / "postgres" / "init.sql").read_text()
    assert "/prefect" in compose["services"]["prefect"]["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"]


def test_kubernetes_job_template_uses_every_variable_and_asks_for_a_gpu() -> None:
    template = json.loads((INFRA / "k8s" / "base-job-template.json").read_text())
    variables = set(template["variables"]["properties"])
    used = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", json.dumps(template["job_configuration"])))
    assert used == variables, (used ^ variables)
    container = template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "{{ gpu_count }}"
    assert template["variables"]["properties"]["gpu_count"]["default"] >= 1
    image = template["variables"]["properties"]["image"]["default"]
    assert image.split(":")[0] == _compose()["x-factory-image"]["image"].split(":")[0]
