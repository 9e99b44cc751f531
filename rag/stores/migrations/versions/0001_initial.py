"""The first schema: documents, chunks, sentences, upload bytes, jobs, the index change log,
conversations and feedback.

Revision ID: 0001
Revises:
"""

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

SCHEMA = """
CREATE TABLE documents (
    id TEXT PRIMARY KEY,
    filename TEXT NOT NULL,
    content_type TEXT NOT NULL,
    size BIGINT NOT NULL,
    collection TEXT NOT NULL DEFAULT 'default',
    metadata TEXT NOT NULL DEFAULT '{}',
    pages INTEGER,
    chunk_count INTEGER NOT NULL DEFAULT 0,
    state TEXT NOT NULL,
    error TEXT,
    created_at DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL
);
CREATE INDEX documents_collection ON documents (collection);
CREATE TABLE chunks (
    id BIGSERIAL PRIMARY KEY,
    document_id TEXT NOT NULL,
    ordinal INTEGER NOT NULL,
    text TEXT NOT NULL,
    start INTEGER NOT NULL,
    "end" INTEGER NOT NULL,
    page INTEGER,
    title_path TEXT NOT NULL DEFAULT '[]',
    token_count INTEGER NOT NULL,
    vector BYTEA NOT NULL,
    UNIQUE (document_id, ordinal)
);
CREATE INDEX chunks_document ON chunks (document_id);
CREATE TABLE sentences (
    id BIGSERIAL PRIMARY KEY,
    document_id TEXT NOT NULL,
    start INTEGER NOT NULL,
    "end" INTEGER NOT NULL,
    text TEXT NOT NULL,
    page INTEGER,
    title_path TEXT NOT NULL DEFAULT '[]',
    vector BYTEA NOT NULL
);
CREATE INDEX sentences_document ON sentences (document_id, start);
-- The original bytes of each upload in parts of at most 1 MiB (streamed in and out).
CREATE TABLE upload_parts (
    document_id TEXT NOT NULL,
    part INTEGER NOT NULL,
    data BYTEA NOT NULL,
    PRIMARY KEY (document_id, part)
);
-- Chunk ids that became searchable (add) or stopped being (remove), in commit order:
-- every API process applies them to its own FAISS and BM25 index.
CREATE TABLE index_log (
    seq BIGSERIAL PRIMARY KEY,
    op TEXT NOT NULL CHECK (op IN ('add', 'remove')),
    chunk_id BIGINT NOT NULL,
    at DOUBLE PRECISION NOT NULL
);
CREATE TABLE jobs (
    id TEXT PRIMARY KEY,
    document_id TEXT NOT NULL,
    filename TEXT NOT NULL,
    content_type TEXT NOT NULL,
    size BIGINT NOT NULL,
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
    created_at DOUBLE PRECISION NOT NULL,
    started_at DOUBLE PRECISION,
    updated_at DOUBLE PRECISION NOT NULL,
    finished_at DOUBLE PRECISION
);
CREATE INDEX jobs_document ON jobs (document_id, created_at);
CREATE INDEX jobs_state ON jobs (state, created_at);
CREATE TABLE conversations (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL DEFAULT '',
    title TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL,
    expires_at DOUBLE PRECISION NOT NULL
);
CREATE INDEX conversations_owner ON conversations (owner, updated_at);
CREATE TABLE answers (
    id TEXT PRIMARY KEY,
    conversation_id TEXT,
    created_at DOUBLE PRECISION NOT NULL,
    expires_at DOUBLE PRECISION NOT NULL,
    record TEXT NOT NULL
);
CREATE INDEX answers_conversation ON answers (conversation_id, created_at);
CREATE TABLE feedback (
    id TEXT PRIMARY KEY,
    created_at DOUBLE PRECISION NOT NULL,
    record TEXT NOT NULL
);
"""

TABLES = ("feedback", "answers", "conversations", "jobs", "index_log", "upload_parts",
          "sentences", "chunks", "documents")


def upgrade() -> None:
    for statement in SCHEMA.split(";"):
        if statement.strip():
            op.execute(statement)


def downgrade() -> None:
    for table in TABLES:
        op.execute(f"DROP TABLE {table}")
