"""Chunk store and upload store: one contract that SQLite and PostgreSQL both pass
(documents, chunks, visibility only once indexed, guarded states, deletes, bytes kept by
hash), and PostgreSQL's index change log."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rag.errors import NotFound, StoreUnavailable, StoreUnreadable
from rag.stores.chunks import ChunkStore, SqliteChunkStore
from rag.stores.chunks_postgres import PgChunkStore
from rag.stores.uploads import BLOCK, Uploads
from rag.types import ChunkDraft, Document


def drafts(n: int) -> list[ChunkDraft]:
    return [ChunkDraft(i, f"text {i}", i * 10, i * 10 + 6, 1, ("T",), 2) for i in range(n)]


def test_chunks_are_searchable_only_after_mark_indexed(store: ChunkStore) -> None:
    store.put_document(Document("d1", "a.txt", "text/plain", 10, state="processing"))
    ids = store.add_chunks("d1", drafts(3), np.eye(3, 4, dtype=np.float32))
    assert store.searchable_count() == 0
    assert store.mark_indexed("d1", pages=1) == 3
    assert store.searchable_count() == 3
    doc = store.get_document("d1")
    assert doc is not None and doc.state == "indexed" and doc.chunk_count == 3
    chunk = store.get_chunks(ids)[ids[1]]
    assert (chunk.text, chunk.start, chunk.end, chunk.title_path) == ("text 1", 10, 16, ("T",))
    assert np.array_equal(store.vectors([ids[2]])[0], np.eye(3, 4, dtype=np.float32)[2])
    batches = list(store.searchable_vectors(batch=2))
    assert [len(b[0]) for b in batches] == [2, 1]


def test_filters_and_delete(store: ChunkStore) -> None:
    for doc_id, coll in (("d1", "x"), ("d2", "y")):
        store.put_document(Document(doc_id, f"{doc_id}.txt", "text/plain", 1, collection=coll))
        store.add_chunks(doc_id, drafts(2), np.ones((2, 4), np.float32))
        store.mark_indexed(doc_id, None)
    assert len(store.searchable_ids(collection="x")) == 2
    assert len(store.searchable_ids(document_ids=["d1", "d2"])) == 4
    assert store.collections() == {"x", "y"}
    removed = store.delete_document("d1")
    assert len(removed) == 2 and store.get_document("d1") is None
    docs, total = store.list_documents()
    assert total == 1 and docs[0].id == "d2"
    assert store.clear_chunks("d2") and store.searchable_count() == 0


def test_put_document_updates_in_place_and_keeps_created_at(store: ChunkStore) -> None:
    first = store.put_document(Document("d1", "a.txt", "text/plain", 10, state="queued"))
    again = store.put_document(Document("d1", "b.txt", "text/plain", 10, collection="c",
                                        metadata={"k": [1, "v"]}, state="queued"))
    assert again.created_at == first.created_at and again.updated_at >= first.updated_at
    doc = store.get_document("d1")
    assert doc is not None and (doc.filename, doc.collection) == ("b.txt", "c")
    assert doc.metadata == {"k": [1, "v"]} and store.list_documents()[1] == 1


def test_states_change_only_along_the_lifecycle(store: ChunkStore) -> None:
    store.put_document(Document("d1", "a.txt", "text/plain", 10, state="queued"))
    assert not store.set_state("d1", "queued")  # queued -> queued: refused
    assert store.set_state("d1", "processing")
    assert store.set_state("d1", "failed", "boom")
    doc = store.get_document("d1")
    assert doc is not None and (doc.state, doc.error) == ("failed", "boom")
    assert not store.set_state("d1", "failed")  # failed -> failed: refused
    store.add_chunks("d1", drafts(1), np.ones((1, 4), np.float32))
    store.set_state("d1", "processing")
    store.mark_indexed("d1", None)
    assert not store.set_state("d1", "queued")  # an indexed document is not queued again
    assert not store.set_state("d1", "cancelled")
    assert store.get_document("d1").state == "indexed"  # type: ignore[union-attr]
    assert not store.set_state("gone", "processing")  # a deleted document stays deleted


def test_sentences_within_spans_in_document_order(store: ChunkStore) -> None:
    from rag.types import SentenceDraft

    store.put_document(Document("d1", "a.txt", "text/plain", 10))
    sentences = [SentenceDraft(i * 10, i * 10 + 9, f"Sentence {i}.", None, ("T",))
                 for i in range(5)]
    store.add_sentences("d1", sentences, np.eye(5, 4, dtype=np.float32))
    found = store.sentences_within([("d1", 25, 41), ("d1", 0, 5), ("d1", 30, 35)])
    assert [s.text for s, _ in found] == ["Sentence 0.", "Sentence 2.", "Sentence 3.",
                                           "Sentence 4."]
    assert np.allclose(found[1][1], np.eye(5, 4)[2]) and found[0][0].title_path == ("T",)
    assert store.sentence_count("d1") == 5
    store.clear_chunks("d1")
    assert store.sentence_count("d1") == 0


def test_searchable_vectors_of_skips_what_is_not_searchable(store: ChunkStore) -> None:
    store.put_document(Document("d1", "a.txt", "text/plain", 1, state="processing"))
    store.put_document(Document("d2", "b.txt", "text/plain", 1, state="processing"))
    one = store.add_chunks("d1", drafts(2), np.eye(2, 4, dtype=np.float32))
    two = store.add_chunks("d2", drafts(1), np.ones((1, 4), np.float32))
    store.mark_indexed("d1", None)
    ids, vectors = store.searchable_vectors_of([*one, *two, 999])
    assert list(ids) == one and vectors.shape == (2, 4)
    assert store.filenames(["d1", "d2"]) == {"d1": "a.txt", "d2": "b.txt"}


def test_uploads_are_kept_once_by_hash_and_read_back_whole(
    uploads: Uploads, tmp_path: Path
) -> None:
    source = tmp_path / "big.bin"
    data = os.urandom(2 * BLOCK + 12345)  # three parts in PostgreSQL
    source.write_bytes(data)
    assert not uploads.has("h1")
    assert uploads.adopt(source, "h1") and uploads.has("h1")
    source.write_bytes(b"other bytes under the same hash are not taken")
    assert not uploads.adopt(source, "h1")
    with uploads.local("h1") as path:
        assert path.read_bytes() == data
    uploads.remove("h1")
    assert not uploads.has("h1")
    with pytest.raises(NotFound), uploads.local("h1"):
        pass


# PostgreSQL only: the change log every API process follows, and what start-up refuses.


def test_change_log_records_adds_and_removes_in_commit_order(pg_url: str) -> None:
    store = PgChunkStore(pg_url)
    store.put_document(Document("d1", "a.txt", "text/plain", 1, state="processing"))
    ids = store.add_chunks("d1", drafts(2), np.ones((2, 4), np.float32))
    assert store.changes_since(0) == []  # stored, not searchable: nothing to follow yet
    store.mark_indexed("d1", None)
    store.delete_document("d1")
    changes = store.changes_since(0)
    assert [(op, cid) for _, op, cid in changes] == [
        ("add", ids[0]), ("add", ids[1]), ("remove", ids[0]), ("remove", ids[1])]
    seqs = [seq for seq, _, _ in changes]
    assert seqs == sorted(seqs) and store.log_position() == seqs[-1]
    assert store.changes_since(seqs[1]) == changes[2:]
    assert store.prune_log(-1) == 3  # everything old goes, but the newest stays
    assert store.log_start() == store.log_position() == seqs[-1]


def test_a_schema_newer_than_the_code_is_refused(pg_url: str) -> None:
    import psycopg

    from rag.stores.postgres import discard_pool

    PgChunkStore(pg_url).open()
    discard_pool(pg_url)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("UPDATE alembic_version SET version_num = '9999'")
    with pytest.raises(StoreUnreadable, match="schema revision 9999, newer"):
        PgChunkStore(pg_url).open()


def test_a_sqlite_file_newer_than_the_code_is_refused(tmp_path: Path) -> None:
    import sqlite3

    SqliteChunkStore(tmp_path / "s.sqlite3").open()
    with sqlite3.connect(tmp_path / "s.sqlite3") as db:
        db.execute("PRAGMA user_version=7")
    with pytest.raises(StoreUnreadable, match="schema version 7, newer"):
        SqliteChunkStore(tmp_path / "s.sqlite3").open()


def test_an_unreachable_server_is_named_without_its_password() -> None:
    url = "postgresql://rag:s3cret@127.0.0.1:9/rag"  # port 9 (discard): nothing listens
    with pytest.raises(StoreUnavailable) as caught:
        PgChunkStore(url).open()
    assert "postgresql://rag:***@127.0.0.1:9/rag" in caught.value.message
    assert "s3cret" not in str(caught.value) and "RAG_DATABASE_URL" in caught.value.hint


def _open_together(path: str, n: int, barrier: Any, failures: Any) -> None:
    barrier.wait()
    try:
        store = SqliteChunkStore(Path(path))
        store.put_document(Document(f"d{n}", "a.txt", "text/plain", 1))
        store.close()
    except Exception as exc:  # reported to the parent, which fails the test
        failures.put(repr(exc))


def test_many_processes_open_a_new_store_at_once(tmp_path: Path) -> None:
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    failures = ctx.Queue()
    for attempt in range(10):  # the race is on creating the file: try fresh ones
        path = str(tmp_path / f"race{attempt}.sqlite3")
        barrier = ctx.Barrier(8)
        procs = [ctx.Process(target=_open_together, args=(path, n, barrier, failures))
                 for n in range(8)]
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.join(60)
        assert failures.empty(), failures.get()
        assert SqliteChunkStore(Path(path)).list_documents()[1] == 8
