"""Distributed mode end to end: the API (Redis queue, Redis cache) and two real `rag worker`
processes sharing the data directory."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from litestar.testing import TestClient

from api.app import create_app
from ingest.worker import healthy
from rag.service import RagService
from rag.settings import Settings
from tests.ingest.helpers import (
    REDIS_URL,
    Workers,
    check_exactly_once,
    make_mixed,
    two_page_text,
    unique_queue,
    wait_for,
    workers,
)

pytestmark = pytest.mark.slow


@dataclass
class Cluster:
    client: TestClient[Any]
    service: RagService
    workers: Workers
    root: Path

    def upload(self, paths: list[Path], **data: str) -> list[dict[str, Any]]:
        files = [("file", (p.name, p.read_bytes())) for p in paths]
        response = self.client.post("/v1/documents", files=files, data=data)
        assert response.status_code == 202, response.text
        return response.json()["documents"]  # type: ignore[no-any-return]

    def job(self, job_id: str) -> dict[str, Any]:
        return self.client.get(f"/v1/jobs/{job_id}").json()  # type: ignore[no-any-return]

    def wait_done(self, job_ids: list[str], timeout_s: float = 300) -> list[dict[str, Any]]:
        def finished() -> list[dict[str, Any]] | None:
            self.workers.check_alive()
            found = [self.job(j) for j in job_ids]
            return found if all(j["state"] in ("done", "failed", "cancelled") for j in found) \
                else None

        found: list[dict[str, Any]] = wait_for(finished, timeout_s, 0.2, "jobs to finish",
                                               self.workers.logs)
        assert [j["state"] for j in found] == ["done"] * len(found), found
        return found


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, embedder: object, generator: object,
            models_dir: Path) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("distributed")
    redis.Redis.from_url(REDIS_URL).flushdb()  # as the redis_client fixture does per test
    settings = Settings(data_dir=root / "data", converted_models_dir=models_dir,
                        redis_url=REDIS_URL, queue_name=unique_queue(), max_new_tokens=24,
                        rate_limit_per_minute=0)
    service = RagService(settings, embedder=embedder, generator=generator)  # type: ignore[arg-type]
    with workers(settings, root, 2) as pool, TestClient(create_app(settings, service=service)) \
            as client:
        wait_for(lambda: client.get("/ready").status_code == 200, 120, 0.2, "the API")
        yield Cluster(client, service, pool, root)
    service.store.close()


def ask(cluster: Cluster, question: str) -> dict[str, Any]:
    response = cluster.client.post("/v1/ask", json={"question": question})
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def test_mixed_formats_uploaded_over_http_are_indexed_and_cited(cluster: Cluster) -> None:
    files = make_mixed(cluster.root / "mixed")
    uploaded = cluster.upload([p for p, _, _ in files.values()], collection="mixed",
                              metadata='{"source": "test"}')
    assert [u["filename"] for u in uploaded] == list(files)
    jobs = cluster.wait_done([u["job_id"] for u in uploaded])
    assert all(j["attempts"] == 1 and j["timings_s"]["embed"] > 0 for j in jobs)
    for name, (_, question, fact) in files.items():
        answer = ask(cluster, question)
        assert answer["citations"], answer
        top = answer["citations"][0]
        assert top["filename"] == name and fact in top["text"], (name, answer)
    doc = cluster.client.get(f"/v1/documents/{uploaded[4]['document_id']}").json()
    assert (doc["filename"], doc["pages"], doc["state"]) == ("observatory.pdf", 2, "indexed")
    assert doc["collection"] == "mixed" and doc["metadata"] == {"source": "test"}
    check_exactly_once(cluster.service)


def test_the_same_bytes_again_point_at_the_existing_document(cluster: Cluster) -> None:
    folder = cluster.root / "dupes"
    folder.mkdir()
    (folder / "tides.txt").write_text("High tide at Saltmarsh quay is at 7:40 in the morning.")
    [first] = cluster.upload([folder / "tides.txt"])
    cluster.wait_done([first["job_id"]])
    before = cluster.client.get("/v1/documents").json()["total"]
    (folder / "copy of tides.txt").write_bytes((folder / "tides.txt").read_bytes())
    [again] = cluster.upload([folder / "copy of tides.txt"])
    assert again["document_id"] == first["document_id"] and again["duplicate"]
    assert again["job_id"] == first["job_id"] and again["job_state"] == "done"
    assert cluster.client.get("/v1/documents").json()["total"] == before


def test_delete_then_ask_never_cites_it_and_drops_its_cached_answers(cluster: Cluster) -> None:
    folder = cluster.root / "delete"
    folder.mkdir()
    # Names no other test uses: answers cached in the shared Redis are keyed by index version,
    # which restarts at 1 in every fresh data directory.
    (folder / "bees.txt").write_text("The Quenby Vale apiary beekeeper is called Tobiah Marsh.")
    [uploaded] = cluster.upload([folder / "bees.txt"])
    cluster.wait_done([uploaded["job_id"]])
    doc_id = uploaded["document_id"]
    question = "Who is the beekeeper of the Quenby Vale apiary?"
    first = ask(cluster, question)
    assert first["citations"][0]["document_id"] == doc_id, first
    assert ask(cluster, question)["cached"]
    cache = redis.Redis.from_url(REDIS_URL)
    assert cache.smembers(f"rag:answers-of:{doc_id}")

    response = cluster.client.delete(f"/v1/documents/{doc_id}")
    assert response.status_code == 200 and response.json()["deleted"] is True
    assert not cache.exists(f"rag:answers-of:{doc_id}")
    again = ask(cluster, question)
    assert not again["cached"]
    assert all(c["document_id"] != doc_id for c in again["citations"])
    assert cluster.client.get(f"/v1/documents/{doc_id}").status_code == 404
    assert cluster.client.delete(f"/v1/documents/{doc_id}").json()["deleted"] is False
    assert not (cluster.service.settings.uploads_dir / doc_id).exists()
    check_exactly_once(cluster.service)


def test_two_workers_ingest_50_documents_concurrently(cluster: Cluster) -> None:
    folder = cluster.root / "fifty"
    folder.mkdir()
    paths = []
    for n in range(50):
        paths.append(folder / f"report-{n:02d}.txt")
        paths[-1].write_text(two_page_text(n))
    uploaded = cluster.upload(paths[:25], collection="fifty") + cluster.upload(
        paths[25:], collection="fifty")
    jobs = cluster.wait_done([u["job_id"] for u in uploaded], timeout_s=600)
    assert len({j["worker"] for j in jobs}) == 2  # both workers took jobs
    listed = cluster.client.get("/v1/documents", params={"collection": "fifty", "limit": 200})
    docs = listed.json()["items"]
    assert listed.json()["total"] == 50 and len({d["id"] for d in docs}) == 50
    assert all(d["state"] == "indexed" and d["chunk_count"] > 0 for d in docs)
    assert sum(d["chunk_count"] for d in docs) == sum(j["progress"]["total"] for j in jobs)
    check_exactly_once(cluster.service)


def test_the_worker_health_check_sees_the_running_workers(cluster: Cluster) -> None:
    assert asyncio.run(healthy(cluster.service.settings))
    other = cluster.service.settings.model_copy(update={"queue_name": unique_queue()})
    assert not asyncio.run(healthy(other))
