"""The records, one module per kind, SQLite and PostgreSQL side by side: `chunks` (documents,
chunks, sentences; `chunks_postgres` adds the index change log), `uploads` (original bytes),
`conversations`, `response_cache` (memory or Redis); `sql` declares what the shared SQL needs,
`sqlite` and `postgres` give it, `migrations/` PostgreSQL's schema (Alembic)."""
