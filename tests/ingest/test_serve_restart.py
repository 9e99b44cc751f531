"""Embedded mode for real: `rag serve` alone ingests uploads, and jobs it acknowledged with 202
survive `kill -9` of the process and finish after a restart, each document indexed once."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ingest.jobs import job_store
from rag.service import RagService
from rag.settings import Settings
from tests.ingest.helpers import Server, check_exactly_once, long_text, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture()
def servers(tmp_path: Path, generator: object, models_dir: Path) -> Iterator[Any]:
    started: list[Server] = []

    def start() -> Server:
        started.append(Server(tmp_path / "data", models_dir, tmp_path / f"serve{len(started)}.log"))
        return started[-1]

    yield start
    for server in started:
        server.kill()


def test_jobs_acknowledged_by_rag_serve_survive_kill_9(
    servers: Any, tmp_path: Path, embedder: object
) -> None:
    first = servers()
    files = [("file", (f"volume-{n}.txt", long_text(40).replace("Sentence", f"Volume {n}")))
             for n in range(5)]
    response = httpx.post(f"{first.url}/v1/documents", files=files, timeout=60)
    assert response.status_code == 202, response.text
    job_ids = [d["job_id"] for d in response.json()["documents"]]
    first.kill()  # at once: no shutdown code runs

    settings = Settings(data_dir=tmp_path / "data")
    at_kill = [job_store(settings).get(j) for j in job_ids]
    assert all(j is not None for j in at_kill)  # every acknowledged job was on disk
    assert any(j.state != "done" for j in at_kill if j), at_kill

    second = servers()

    def all_done() -> list[dict[str, Any]] | None:
        jobs = [httpx.get(f"{second.url}/v1/jobs/{j}").json() for j in job_ids]
        return jobs if all(j["state"] not in ("queued", "running") for j in jobs) else None

    jobs = wait_for(all_done, 600, 0.5, "the restarted server to finish the jobs",
                    lambda: second.log.read_text()[-4000:])
    assert [j["state"] for j in jobs] == ["done"] * 5, jobs
    listed = httpx.get(f"{second.url}/v1/documents").json()
    assert listed["total"] == 5 and {d["state"] for d in listed["items"]} == {"indexed"}
    second.kill()
    service = RagService(settings, embedder=embedder)  # type: ignore[arg-type]
    service.load(generator=False)
    check_exactly_once(service)
    service.store.close()
