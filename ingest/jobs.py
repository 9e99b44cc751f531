"""Ingestion job records, and the one place a job's state changes.

Every write to a job record is a method of `JobStore` here: `submit` creates it, the
transitions below move it, `withdraw` removes one never acknowledged. Callers (intake, the
runner, the queues and the worker's reconciler) decide *when* from what they see, and call
the transition that says *what*: they never write a state themselves. The SQL is portable and
lives in `JobStore`, the type callers use; `SqliteJobStore` (here) runs it on `jobs.sqlite3`
under the data directory, `PgJobStore` (ingest.jobs_postgres) on PostgreSQL (`RAG_DATABASE_URL`).
`job_store` picks one.

Every process of a deployment reads the same records, so `GET /v1/jobs/{id}` reads the same
table whether the job runs in-process or on a `rag worker` elsewhere. A record is committed
(synchronous) before the API answers 202, so an acknowledged job survives a crash of the API.

States: queued -> running -> done | failed | cancelled; running -> queued when an attempt
fails with an error worth retrying or its worker is interrupted.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from rag.settings import Settings
from rag.stores.sql import SqlRecords
from rag.stores.sqlite import SqliteDatabase

JobState = Literal["queued", "running", "done", "failed", "cancelled"]
ACTIVE: tuple[JobState, ...] = ("queued", "running")
FINISHED: tuple[JobState, ...] = ("done", "failed", "cancelled")
STAGES = ("parse", "chunk", "embed", "index")

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    document_id TEXT NOT NULL,
    filename TEXT NOT NULL,
    content_type TEXT NOT NULL,
    size INTEGER NOT NULL,
    state TEXT NOT NULL,
    stage TEXT,
    done INTEGER NOT NULL DEFAULT 0,
    total INTEGER,
    estimate INTEGER,
    attempts INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL,
    error TEXT,
    timings TEXT NOT NULL DEFAULT '{}',
    worker TEXT,
    created_at REAL NOT NULL,
    started_at REAL,
    updated_at REAL NOT NULL,
    finished_at REAL
);
CREATE INDEX IF NOT EXISTS jobs_document ON jobs(document_id, created_at);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state, created_at);
"""

COLUMNS = (
    "id, document_id, filename, content_type, size, state, stage, done, total, estimate, "
    "attempts, max_attempts, error, timings, worker, created_at, started_at, updated_at, "
    "finished_at"
)

# Chunks per byte of upload when no finished job of that type says better: ~700 characters
# per 200-token window of text, and office/pdf containers hold roughly a third text.
DEFAULT_CHUNKS_PER_BYTE = {"text": 1 / 700, "binary": 1 / 2100}


@dataclass(frozen=True)
class Job:
    """One ingestion job: a document to parse, chunk, embed and index."""

    id: str
    document_id: str
    filename: str
    content_type: str
    size: int
    state: JobState
    stage: str | None = None
    done: int = 0
    total: int | None = None
    estimate: int | None = None
    attempts: int = 0
    max_attempts: int = 1
    error: str | None = None
    timings: Mapping[str, float] = field(default_factory=dict)
    worker: str | None = None
    created_at: float = 0.0
    started_at: float | None = None
    updated_at: float = 0.0
    finished_at: float | None = None

    @property
    def finished(self) -> bool:
        return self.state in FINISHED

    def eta_s(self, now: float | None = None) -> float | None:
        """Seconds left, from the chunk rate so far and the (estimated) chunk total."""
        total = self.total or self.estimate
        if self.state != "running" or not self.started_at or not total or self.done <= 0:
            return None
        elapsed = (now or time.time()) - self.started_at
        return max(0.0, elapsed / self.done * max(total - self.done, 0))


class JobStore(SqlRecords):
    """The job records in the `jobs` table: the queries and transitions both backends run.

    A backend class puts its database class first (`SqliteDatabase`, `PostgresDatabase`),
    which gives the primitives `rag.stores.sql.SqlRecords` declares.
    """

    def _rows(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self._query(sql, args)

    def _update(self, sql: str, args: Sequence[Any]) -> int:
        """One statement in its own transaction; returns the rows changed."""
        return self.execute(sql, args)

    # Creating and reading

    def submit(
        self, document_id: str, filename: str, content_type: str, size: int, max_attempts: int
    ) -> tuple[Job, bool]:
        """The document's active job, or a new queued one: (job, created), atomically."""
        now = time.time()
        with self.transaction() as db:  # BEGIN IMMEDIATE serializes submitters across processes
            self.serialize(db, f"job:{document_id}")  # (PostgreSQL: per document)
            row = db.execute(
                f"SELECT {COLUMNS} FROM jobs WHERE document_id = ? AND state IN (?, ?) "
                "ORDER BY created_at DESC LIMIT 1", (document_id, *ACTIVE)).fetchone()
            created = row is None
            if created:
                job_id = uuid.uuid4().hex
                db.execute(
                    "INSERT INTO jobs (id, document_id, filename, content_type, size, state, "
                    "max_attempts, created_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?)",
                    (job_id, document_id, filename, content_type, size, "queued",
                     max_attempts, now, now))
                row = db.execute(f"SELECT {COLUMNS} FROM jobs WHERE id = ?",
                                 (job_id,)).fetchone()
        return _job(row), created

    def get(self, job_id: str) -> Job | None:
        rows = self._rows(f"SELECT {COLUMNS} FROM jobs WHERE id = ?", (job_id,))
        return _job(rows[0]) if rows else None

    def latest_for(self, document_id: str) -> Job | None:
        rows = self._rows(f"SELECT {COLUMNS} FROM jobs WHERE document_id = ? "
                          "ORDER BY created_at DESC LIMIT 1", (document_id,))
        return _job(rows[0]) if rows else None

    def active_for(self, document_id: str) -> list[Job]:
        rows = self._rows(f"SELECT {COLUMNS} FROM jobs WHERE document_id = ? AND state IN (?, ?)",
                          (document_id, *ACTIVE))
        return [_job(r) for r in rows]

    def unfinished(self) -> list[Job]:
        """Queued and running jobs, oldest first (to resume or resubmit at start)."""
        rows = self._rows(f"SELECT {COLUMNS} FROM jobs WHERE state IN (?, ?) "
                          "ORDER BY created_at, id", ACTIVE)
        return [_job(r) for r in rows]

    def queued(self) -> list[Job]:
        rows = self._rows(f"SELECT {COLUMNS} FROM jobs WHERE state = 'queued' "
                          "ORDER BY created_at, id")
        return [_job(r) for r in rows]

    def chunks_per_byte(self, content_type: str) -> float:
        """Chunks per upload byte of recently finished jobs of this type (for estimates)."""
        rows = self._rows(
            "SELECT SUM(total), SUM(size) FROM (SELECT total, size FROM jobs WHERE state = 'done' "
            "AND content_type = ? AND total > 0 ORDER BY finished_at DESC LIMIT 50) AS recent",
            (content_type,))
        chunks, size = rows[0]
        if chunks and size:
            return float(chunks) / float(size)
        kind = "text" if content_type.startswith(("text/", "application/json",
                                                  "application/xml", "message/")) else "binary"
        return DEFAULT_CHUNKS_PER_BYTE[kind]

    # Transitions (each conditional on the state, so a cancellation is never overwritten)

    def begin_attempt(self, job_id: str, worker: str, attempt: int | None = None) -> Job | None:
        """queued/running -> running with one more attempt; None when it is finished."""
        job = self.get(job_id)
        if job is None or job.finished:
            return None
        estimate = max(1, round(job.size * self.chunks_per_byte(job.content_type)))
        now = time.time()
        changed = self._update(
            "UPDATE jobs SET state = 'running', stage = 'parse', done = 0, total = NULL, "
            "estimate = ?, attempts = ?, worker = ?, timings = '{}', started_at = ?, "
            "updated_at = ? WHERE id = ? AND state IN (?, ?)",
            (estimate, attempt if attempt is not None else job.attempts + 1, worker, now, now,
             job_id, *ACTIVE))
        return self.get(job_id) if changed else None

    def report(
        self, job_id: str, stage: str, done: int, total: int | None,
        timings: Mapping[str, float],
    ) -> JobState | None:
        """Record progress of a running job; returns its state (to notice a cancellation)."""
        self._update(
            "UPDATE jobs SET stage = ?, done = ?, total = ?, timings = ?, updated_at = ? "
            "WHERE id = ? AND state = 'running'",
            (stage, done, total, _timings(timings), time.time(), job_id))
        return self.state(job_id)

    def state(self, job_id: str) -> JobState | None:
        rows = self._rows("SELECT state FROM jobs WHERE id = ?", (job_id,))
        return rows[0][0] if rows else None

    def requeue(self, job_id: str, error: str | None) -> bool:
        """running -> queued, keeping the error of the attempt that stopped."""
        return bool(self._update(
            "UPDATE jobs SET state = 'queued', error = ?, updated_at = ? "
            "WHERE id = ? AND state = 'running'", (error, time.time(), job_id)))

    def finish(
        self, job_id: str, state: JobState, error: str | None = None,
        timings: Mapping[str, float] | None = None, total: int | None = None,
        force: bool = False,
    ) -> bool:
        """An active job -> done, failed or cancelled; False when it had already finished.

        `force` also overrules a cancellation (a job that indexed its document is done).
        """
        now = time.time()
        sets = "state = ?, error = ?, finished_at = ?, updated_at = ?"
        args: list[Any] = [state, error, now, now]
        if timings is not None:
            sets += ", timings = ?"
            args.append(_timings(timings))
        if total is not None:
            sets += ", total = ?, done = ?"
            args.extend([total, total])
        if state == "done":
            sets += ", stage = 'index'"
        allowed = (*ACTIVE, "cancelled") if force else ACTIVE
        marks = ",".join("?" * len(allowed))
        return bool(self._update(f"UPDATE jobs SET {sets} WHERE id = ? AND state IN ({marks})",
                                 [*args, job_id, *allowed]))

    def withdraw(self, job_id: str) -> bool:
        """Remove a queued job that was never acknowledged (its upload was refused whole)."""
        return bool(self._update("DELETE FROM jobs WHERE id = ? AND state = 'queued'", (job_id,)))

    def cancel(self, job_id: str) -> Job | None:
        """queued/running -> cancelled; the runner notices at its next progress report."""
        self.finish(job_id, "cancelled", "Cancelled on request.")
        return self.get(job_id)

    # Transitions by what happened (each names the outcome once, for every caller)

    def resume_unfinished(self) -> list[Job]:
        """Unfinished jobs to run again at start, oldest first; one still `running` after it
        used every attempt (its process died during each) -> failed instead."""
        resumed = []
        for job in self.unfinished():
            if job.state == "running" and job.attempts >= job.max_attempts:  # died every time
                self.finish(job.id, "failed", f"The process died during each of its "
                            f"{job.attempts} attempts.")
                continue
            resumed.append(job)
        return resumed

    def document_gone(self, job_id: str) -> bool:
        """Its document was deleted before it was indexed -> cancelled."""
        return self.finish(job_id, "cancelled", "The document was deleted before it was indexed.")

    def interrupted(self, job_id: str) -> bool:
        """Its worker stopped (or the attempt timed out) mid-attempt -> queued, to run again."""
        return self.requeue(job_id, "Interrupted (its worker stopped or the attempt timed "
                            "out); it runs again.")

    def fail(self, job_id: str, error: str, timings: Mapping[str, float] | None = None) -> bool:
        """The file itself is at fault (retrying would fail the same way) -> failed."""
        return self.finish(job_id, "failed", error, timings)

    def complete(self, job_id: str, timings: Mapping[str, float], chunks: int) -> None:
        """Its document is indexed -> done; a cancellation that arrived after the document was
        indexed stands overruled, and the record says so."""
        if not self.finish(job_id, "done", None, timings, chunks):
            self.finish(job_id, "done", "Indexed before the cancellation took effect.",
                        timings, chunks, force=True)

    def attempt_failed(self, job: Job, error: str, timings: Mapping[str, float]) -> bool:
        """An attempt failed unexpectedly: queued again while attempts are left (True), else
        failed (False). `job` is the record as its attempt began."""
        if job.attempts < job.max_attempts:
            self.requeue(job.id, f"Attempt {job.attempts} of {job.max_attempts} failed: {error}")
            return True
        self.finish(job.id, "failed", f"Failed after {job.attempts} attempts: {error}", timings)
        return False

    def timed_out(self, job_id: str, timeout_s: float, attempts: int) -> bool:
        """Every attempt ran past RAG_JOB_TIMEOUT_S -> failed."""
        return self.finish(job_id, "failed", f"Timed out after {timeout_s} s on each of "
                           f"{attempts} attempts (RAG_JOB_TIMEOUT_S).")

    def queue_entry_lost(self, job: Job) -> bool:
        """A running job whose queue entry and worker are both gone: queued again while it has
        attempts left (True: the caller queues it), else failed (False)."""
        if job.attempts < job.max_attempts and self.requeue(
                job.id, "Its queue entry was lost (was Redis reset?) while its worker "
                "was silent; it runs again."):
            return True
        self.finish(job.id, "failed", "Its queue entry was lost (was Redis reset?) "
                    "and its worker stopped. Upload the file again.")
        return False

    def given_up(self, job_id: str, attempts: int, why: str) -> bool:
        """The queue gave up on it (its last worker died, or the attempt failed) -> failed."""
        return self.finish(job_id, "failed", f"Gave up after {attempts} attempts: {why}.")

def _timings(timings: Mapping[str, float]) -> str:
    return json.dumps({k: round(v, 4) for k, v in timings.items()})

def _job(row: tuple[Any, ...]) -> Job:
    return Job(
        id=row[0], document_id=row[1], filename=row[2], content_type=row[3], size=row[4],
        state=row[5], stage=row[6], done=row[7], total=row[8], estimate=row[9], attempts=row[10],
        max_attempts=row[11], error=row[12], timings=json.loads(row[13] or "{}"), worker=row[14],
        created_at=row[15], started_at=row[16], updated_at=row[17], finished_at=row[18],
    )


class SqliteJobStore(SqliteDatabase, JobStore):
    """Jobs in `jobs.sqlite3`: WAL mode with full fsync; safe across threads and processes."""

    SCHEMA = SCHEMA


def job_store(settings: Settings) -> JobStore:
    """The job records: PostgreSQL when configured, else this data directory's SQLite."""
    if settings.database_url:
        from ingest.jobs_postgres import PgJobStore

        return PgJobStore(settings.database_url)
    return SqliteJobStore(settings.data_dir / "jobs.sqlite3")
