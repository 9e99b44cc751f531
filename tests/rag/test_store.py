"""Chunk store: documents, chunks, visibility only once indexed, deletes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from rag.chunking import ChunkDraft
from rag.store import ChunkStore
from rag.types import Document


def drafts(n: int) -> list[ChunkDraft]:
    return [ChunkDraft(i, f"text {i}", i * 10, i * 10 + 6, 1, ("T",), 2) for i in range(n)]


def test_chunks_are_searchable_only_after_mark_indexed(tmp_path: Path) -> None:
    store = ChunkStore(tmp_path / "s.sqlite3")
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


def test_filters_and_delete(tmp_path: Path) -> None:
    store = ChunkStore(tmp_path / "s.sqlite3")
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


def _open_together(path: str, n: int, barrier: Any, failures: Any) -> None:
    barrier.wait()
    try:
        store = ChunkStore(Path(path))
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
        assert ChunkStore(Path(path)).list_documents()[1] == 8
