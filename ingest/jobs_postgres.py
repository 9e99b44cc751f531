"""The job records on PostgreSQL: `JobStore`'s SQL over the shared connection pool."""

from __future__ import annotations

from ingest.jobs import JobStore
from rag.stores.postgres import PostgresDatabase


class PgJobStore(PostgresDatabase, JobStore):
    """Jobs in the `jobs` table of `RAG_DATABASE_URL` (migrated with the rest at start)."""
