"""A worker killed with SIGKILL in the middle of embedding: nothing half-indexed meanwhile,
another worker takes the job over, and the document ends up indexed exactly once (with the
SQLite store on one machine, and with PostgreSQL, where the worker shares no disk)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import TestClient

from api.app import create_app
from rag.documents import parsing
from rag.service import RagService
from tests.ingest.helpers import (
    REDIS_URL,
    Workers,
    check_exactly_once,
    long_text,
    unique_queue,
    wait_for,
)

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("store", ["sqlite", "postgres"])
def test_sigkill_mid_embed_then_another_worker_indexes_exactly_once(
    store: str, make_service, redis_client, tmp_path: Path,  # type: ignore[no-untyped-def]
    request: pytest.FixtureRequest,
) -> None:
    database = {"database_url": request.getfixturevalue("pg_url")} if store == "postgres" else {}
    service: RagService = make_service(redis_url=REDIS_URL, queue_name=unique_queue(),
                                       job_heartbeat_s=2, job_attempts=3,
                                       rate_limit_per_minute=0, **database)
    path = tmp_path / "chronicle.txt"
    path.write_text(long_text(300))
    assert service.documents.chunker is not None
    expected = [(d.ordinal, d.start, d.end) for d in
                service.documents.chunker.chunk(parsing.parse(path, path.name, service.settings))]
    own = {"data_dir": tmp_path / "worker-data"} if store == "postgres" else {}  # no shared disk
    pool = Workers(service.settings.model_copy(update=own), tmp_path)
    try:
        first = pool.start()
        pool.wait_ready()
        with TestClient(create_app(service.settings, service=service)) as client:
            wait_for(lambda: client.get("/ready").status_code == 200, 60, what="the API")
            upload = [("file", (path.name, path.read_bytes()))]
            response = client.post("/v1/documents", files=upload)
            assert response.status_code == 202, response.text
            [uploaded] = response.json()["documents"]
            job_id, doc_id = uploaded["job_id"], uploaded["document_id"]

            def mid_embed() -> dict[str, Any] | None:
                pool.check_alive()
                job = client.get(f"/v1/jobs/{job_id}").json()
                return job if job["stage"] == "embed" and job["progress"]["done"] >= 64 else None

            seen = wait_for(mid_embed, 300, 0.05, "the first worker to embed 64 chunks",
                            pool.logs)
            os.kill(first.pid, signal.SIGKILL)
            first.wait()

            # The dead worker leaves stored chunks that nothing can find.
            assert seen["state"] == "running" and seen["eta_s"] is not None
            assert seen["worker"].endswith(f"-{first.pid}") and seen["attempts"] == 1
            partial = len(service.store.chunk_ids(doc_id))
            assert 64 <= partial < len(expected)
            assert service.store.get_document(doc_id).state == "processing"  # type: ignore[union-attr]
            assert len(service.store.searchable_ids(document_ids=[doc_id])) == 0
            check_exactly_once(service)

            killed_at = time.monotonic()
            second = pool.start()
            done = wait_for(lambda: _finished(client, job_id), 600, 0.2,
                            "the second worker to finish the job", pool.logs)
        assert done["state"] == "done", done
        assert done["attempts"] == 2 and done["worker"].endswith(f"-{second.pid}")
        assert "Sweeping job" in pool.log(1)
        doc = service.store.get_document(doc_id)
        assert doc is not None and doc.state == "indexed" and doc.chunk_count == len(expected)
        rows = service.store._query(
            'SELECT ordinal, start, "end" FROM chunks WHERE document_id = ? ORDER BY ordinal',
            (doc_id,))
        assert [tuple(r) for r in rows] == expected
        check_exactly_once(service)
        print(f"\nkill test: worker {first.pid} killed at {seen['progress']['done']} of "
              f"{len(expected)} chunks ({partial} stored, 0 searchable); worker {second.pid} "
              f"finished attempt 2 {time.monotonic() - killed_at:.1f} s later with "
              f"{doc.chunk_count} chunks, none duplicated, FAISS = store = "
              f"{service.store.searchable_count()}")
    finally:
        pool.stop()


def _finished(client: TestClient[Any], job_id: str) -> dict[str, Any] | None:
    job: dict[str, Any] = client.get(f"/v1/jobs/{job_id}").json()
    return job if job["state"] in ("done", "failed", "cancelled") else None
