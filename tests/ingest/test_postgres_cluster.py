"""Distributed mode with no shared disk, for real: PostgreSQL holds the store, two `rag serve`
processes each build their own index in their own empty data directory and follow the change
log, and one `rag worker` (its own data directory too) writes to the store only. Upload to one
API, ask the other, delete through the second: neither cites the document any more."""

from __future__ import annotations

import time
from pathlib import Path
from statistics import median
from typing import Any

import httpx
import psycopg
import pytest

from rag.settings import Settings
from tests.conftest import REDIS_URL
from tests.ingest.helpers import FACTS, Server, unique_queue, wait_for, workers

pytestmark = pytest.mark.slow


def ask(server: Server, question: str) -> dict[str, Any]:
    response = httpx.post(f"{server.url}/v1/ask", json={"question": question, "top_k": 3},
                          timeout=120)
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def cites(server: Server, question: str, filename: str) -> bool:
    return any(c["filename"] == filename for c in ask(server, question)["citations"])


def searchable_on(reader: Server, writer: Server, url: str, n: int, pool: Any) -> float:
    """Upload a small file to `writer`; ms from its job's end until `reader`'s index has
    applied every change the log held then (a job is done once its chunks are committed)."""
    body = f"Notice {n}: berth {n} of the east quay is closed for dredging.".encode()
    response = httpx.post(f"{writer.url}/v1/documents", files=[("file", (f"n{n}.txt", body))],
                          timeout=60)
    job_url = f"{writer.url}/v1/jobs/{response.json()['documents'][0]['job_id']}"
    wait_for(lambda: httpx.get(job_url).json()["state"] == "done", 120, 0.02, "the job",
             pool.logs)
    done = time.monotonic()
    with psycopg.connect(url) as conn:
        position = conn.execute("SELECT MAX(seq) FROM index_log").fetchone()[0]  # type: ignore[index]
    wait_for(lambda: httpx.get(f"{reader.url}/ready").json()["index_log"]["applied"]
             >= position, 10, 0.005, "the other API to apply the change")
    return (time.monotonic() - done) * 1000


def kept_files(data_dir: Path) -> list[Path]:
    """Uploads kept on this process's disk (none should be: the bytes live in PostgreSQL)."""
    uploads = data_dir / "uploads"
    return [p for p in uploads.rglob("*") if p.is_file()] if uploads.exists() else []


def test_upload_to_one_api_ask_the_other_delete_through_it(
    tmp_path: Path, pg_url: str, models_dir: Path, generator: object, redis_client: object
) -> None:
    queue = unique_queue()
    common = {"database_url": pg_url, "redis_url": REDIS_URL, "queue_name": queue,
              "max_new_tokens": "24"}
    worker_settings = Settings(data_dir=tmp_path / "worker", converted_models_dir=models_dir,
                               database_url=pg_url, redis_url=REDIS_URL, queue_name=queue)
    with workers(worker_settings, tmp_path, 1) as pool:
        first = Server(tmp_path / "first", models_dir, tmp_path / "first.log", **common)
        second = Server(tmp_path / "second", models_dir, tmp_path / "second.log", **common)
        try:
            name = "harbour.md"
            text, question, _ = FACTS[name]
            response = httpx.post(f"{first.url}/v1/documents",
                                  files=[("file", (name, text.encode()))], timeout=60)
            assert response.status_code == 202, response.text
            accepted = response.json()["documents"][0]
            job_url = f"{first.url}/v1/jobs/{accepted['job_id']}"
            wait_for(lambda: httpx.get(job_url).json()["state"] == "done", 180, 0.1,
                     "the job", pool.logs)
            wait_for(lambda: cites(second, question, name), 10, 0.1, "the other API to cite it")
            lags = [searchable_on(second, first, pg_url, n, pool) for n in range(6)]
            print(f"job done -> searchable on the other API: p50 {median(lags):.0f} ms, "
                  f"max {max(lags):.0f} ms over {len(lags)} uploads")
            assert max(lags) < 6000  # within one catch-up period even if a NOTIFY were lost
            one, other = ask(first, question), ask(second, question)  # the same store and log:
            assert one["answer"] == other["answer"]  # the same answer, from the same chunks
            assert [c["chunk_id"] for c in one["citations"]] == \
                [c["chunk_id"] for c in other["citations"]]
            log = httpx.get(f"{second.url}/ready").json()["index_log"]
            assert log["applied"] > 0 and log["behind"] == 0 and log["error"] is None

            deleted = httpx.delete(f"{second.url}/v1/documents/{accepted['document_id']}")
            assert deleted.status_code == 200 and deleted.json()["deleted"] is True
            gone = time.monotonic()
            with psycopg.connect(pg_url) as conn:
                position = conn.execute("SELECT MAX(seq) FROM index_log").fetchone()[0]  # type: ignore[index]
            for server in (second, first):
                wait_for(lambda s=server: httpx.get(f"{s.url}/ready").json()["index_log"]  # type: ignore[misc]
                         ["applied"] >= position, 2.0, 0.005, "the deletion to reach every API")
            print(f"deleted -> gone from both APIs' indexes {time.monotonic() - gone:.2f} s")
            assert not cites(second, question, name) and not cites(first, question, name)
            for data_dir in (tmp_path / "first", tmp_path / "second", tmp_path / "worker"):
                assert kept_files(data_dir) == []
            assert not (tmp_path / "worker" / "index").exists()  # workers keep no index
        finally:
            first.kill()
            second.kill()


def test_postgresql_alone_queues_the_jobs_for_a_worker_without_redis(
    make_service: Any, pg_url: str, tmp_path: Path
) -> None:
    """RAG_QUEUE=postgres: SAQ's PostgreSQL queue; no Redis anywhere."""
    from litestar.testing import TestClient

    from api.app import create_app

    service = make_service(database_url=pg_url, queue="postgres", queue_name=unique_queue(),
                           max_new_tokens=16, rate_limit_per_minute=0)
    assert service.settings.redis_url is None
    own = service.settings.model_copy(update={"data_dir": tmp_path / "worker"})
    with workers(own, tmp_path, 1) as pool, \
            TestClient(create_app(service.settings, service=service)) as client:
        wait_for(lambda: client.get("/ready").status_code == 200, 60, what="the API")
        name = "orchard.txt"
        text, question, _ = FACTS[name]
        response = client.post("/v1/documents", files=[("file", (name, text.encode()))])
        assert response.status_code == 202, response.text
        job_id = response.json()["documents"][0]["job_id"]
        job = wait_for(lambda: (j := client.get(f"/v1/jobs/{job_id}").json())["state"]
                       in ("done", "failed") and j, 120, 0.1, "the job", pool.logs)
        assert job["state"] == "done" and job["worker"] is not None, job
        assert "ready: queue" in pool.log(0) and "redis" not in pool.log(0).lower()
        answer = client.post("/v1/ask", json={"question": question}).json()
        assert any(c["filename"] == name for c in answer["citations"])
