"""One job attempt against the real engine: failures, retries, cancellation, interruption and
exactly-once indexing after an attempt that died at any point."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from ingest.intake import Intake
from ingest.jobs import Job, JobStore, job_store
from ingest.runner import JobRunner, Outcome
from rag.embedding import Vectors
from rag.service import RagService
from tests.ingest.helpers import (
    check_exactly_once,
    long_text,
    make_broken_docx,
    make_pdf,
    stage,
    wait_for,
)

pytestmark = pytest.mark.slow


@pytest.fixture()
def service(make_service) -> RagService:  # type: ignore[no-untyped-def]
    return make_service(job_attempts=2)  # type: ignore[no-any-return]


@pytest.fixture()
def jobs(service: RagService) -> JobStore:
    store = job_store(service.settings)
    store.open()
    return store


def accept(service: RagService, jobs: JobStore, path: Path) -> Job:
    intake = Intake(service.settings, service.documents, jobs)
    [accepted] = intake.accept([stage(intake, path)], "default", {})
    assert accepted.job is not None
    return accepted.job


def chunk_layout(service: RagService, doc_id: str) -> list[tuple[int, int, int]]:
    rows = service.store.db.execute(
        'SELECT ordinal, start, "end" FROM chunks WHERE document_id = ? ORDER BY ordinal',
        (doc_id,)).fetchall()
    return [tuple(r) for r in rows]


def test_a_parse_failure_fails_the_job_with_its_reason_once(
    service: RagService, jobs: JobStore, tmp_path: Path
) -> None:
    job = accept(service, jobs, make_broken_docx(tmp_path / "minutes.docx"))
    assert JobRunner(service.documents, jobs).run(job.id, threading.Event()) is Outcome.FAILED
    failed = jobs.get(job.id)
    assert failed is not None and failed.state == "failed" and failed.attempts == 1
    assert "minutes.docx could not be read as docx" in (failed.error or "")
    doc = service.store.get_document(job.document_id)
    assert doc is not None and doc.state == "failed" and doc.error
    assert service.store.chunk_ids(job.document_id) == []


def test_a_scan_without_text_fails_with_a_hint(
    service: RagService, jobs: JobStore, tmp_path: Path
) -> None:
    from fpdf import FPDF

    pdf = FPDF()
    pdf.add_page()
    pdf.rect(20, 20, 100, 50, style="F")
    pdf.output(str(tmp_path / "scan.pdf"))
    job = accept(service, jobs, tmp_path / "scan.pdf")
    assert JobRunner(service.documents, jobs).run(job.id, threading.Event()) is Outcome.FAILED
    assert "no text layer" in (jobs.get(job.id).error or "")  # type: ignore[union-attr]


class BrokenEmbedder:
    """Stands in for a model whose device fails (an error worth retrying)."""

    def __init__(self, real: object) -> None:
        self.real = real

    def __getattr__(self, name: str) -> object:
        return getattr(self.real, name)

    def embed(self, texts: Sequence[str]) -> Vectors:
        raise RuntimeError("CUDA error: device-side assert")


def test_unexpected_errors_are_retried_then_fail(
    service: RagService, jobs: JobStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "a.txt").write_text("The lighthouse keeper rings the bell at dusk.")
    job = accept(service, jobs, tmp_path / "a.txt")
    # the shared embedder fails for this test (monkeypatch restores it)
    monkeypatch.setattr(service.embedder, "embed", BrokenEmbedder(service.embedder).embed)
    runner = JobRunner(service.documents, jobs)
    assert runner.run(job.id, threading.Event()) is Outcome.RETRY
    again = jobs.get(job.id)
    assert again is not None and again.state == "queued" and again.attempts == 1
    assert "Attempt 1 of 2 failed: RuntimeError: CUDA error" in (again.error or "")
    assert runner.run(job.id, threading.Event()) is Outcome.FAILED
    failed = jobs.get(job.id)
    assert failed is not None and failed.state == "failed" and failed.attempts == 2
    assert (failed.error or "").startswith("Failed after 2 attempts")
    monkeypatch.undo()
    assert service.store.chunk_ids(job.document_id) == []


def run_until(service: RagService, jobs: JobStore, job: Job, stop: threading.Event,
              then: object) -> Outcome:
    """Run the job in a thread; once 64 chunks are embedded, call `then` (cancel or stop)."""
    outcome: list[Outcome] = []
    runner = JobRunner(service.documents, jobs, report_every_s=0.0)
    thread = threading.Thread(target=lambda: outcome.append(runner.run(job.id, stop)))
    thread.start()
    wait_for(lambda: (jobs.get(job.id) or job).done >= 64, 120, what="64 chunks embedded")
    then()  # type: ignore[operator]
    thread.join(120)
    return outcome[0]


def test_cancelling_a_running_job_leaves_nothing_indexed(
    service: RagService, jobs: JobStore, tmp_path: Path
) -> None:
    (tmp_path / "long.txt").write_text(long_text(150))
    before = service.store.searchable_count()
    job = accept(service, jobs, tmp_path / "long.txt")
    outcome = run_until(service, jobs, job, threading.Event(), lambda: jobs.cancel(job.id))
    assert outcome is Outcome.CANCELLED
    assert jobs.get(job.id).state == "cancelled"  # type: ignore[union-attr]
    assert service.store.get_document(job.document_id).state == "cancelled"  # type: ignore[union-attr]
    assert service.store.chunk_ids(job.document_id) == []
    assert service.store.searchable_count() == before
    check_exactly_once(service)


def test_an_interrupted_job_is_queued_again_and_finishes(
    service: RagService, jobs: JobStore, tmp_path: Path
) -> None:
    (tmp_path / "long.txt").write_text(long_text(100))
    job = accept(service, jobs, tmp_path / "long.txt")
    stop = threading.Event()
    assert run_until(service, jobs, job, stop, stop.set) is Outcome.INTERRUPTED
    queued = jobs.get(job.id)
    assert queued is not None and queued.state == "queued" and queued.attempts == 1
    assert service.store.chunk_ids(job.document_id) == []
    assert JobRunner(service.documents, jobs).run(job.id, threading.Event()) is Outcome.DONE
    done = jobs.get(job.id)
    assert done is not None and done.state == "done" and done.attempts == 2
    assert set(done.timings) == {"parse", "chunk", "embed", "index"}
    check_exactly_once(service)


@pytest.mark.parametrize("died", ["mid-embed", "before the index was saved", "before the ack"])
def test_a_retry_after_a_dead_attempt_indexes_exactly_once(
    service: RagService, jobs: JobStore, make_service, tmp_path: Path, died: str  # type: ignore[no-untyped-def]
) -> None:
    path = make_pdf(tmp_path / "report.pdf", [long_text(6), long_text(5)])
    reference = make_service()
    fresh = reference.documents.ingest_file(path)
    job = accept(service, jobs, path)
    runner = JobRunner(service.documents, jobs)
    empty = service.store.searchable_mark()
    assert runner.run(job.id, threading.Event()) is Outcome.DONE
    doc_id, index = job.document_id, service.index._faiss()
    ids = service.store.chunk_ids(doc_id)
    # Leave the data as a worker killed at that point would have left it: the index saved
    # last (with the store's checksum) before the document was swapped in.
    if died in ("mid-embed", "before the index was saved"):
        index.remove(np.array(ids, dtype=np.int64))
        index.store_mark = empty
        index.save()
    if died == "mid-embed":
        service.store.set_state(doc_id, "processing")
        service.store.db.execute("DELETE FROM chunks WHERE document_id = ? AND ordinal >= 3",
                                 (doc_id,))
    jobs._update("UPDATE jobs SET state = 'running', finished_at = NULL WHERE id = ?", (job.id,))
    assert runner.run(job.id, threading.Event(), attempt=2) is Outcome.DONE
    doc = service.store.get_document(doc_id)
    assert doc is not None and doc.state == "indexed" and doc.chunk_count == fresh.chunk_count
    assert doc.pages == fresh.pages == 2
    assert chunk_layout(service, doc_id) == chunk_layout(reference, doc_id)
    assert jobs.get(job.id).attempts == 2  # type: ignore[union-attr]
    if died != "mid-embed":  # already swapped in: kept as it is, searchable throughout
        assert service.store.chunk_ids(doc_id) == ids
    check_exactly_once(service)
