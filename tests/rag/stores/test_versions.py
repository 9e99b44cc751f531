"""Document versions in the store, on SQLite and PostgreSQL: a new version of a name replaces
the old one in one transaction, versions racing on one name end with one current version,
deleting removes the lineage, and a version can take its predecessor's vectors by text."""

from __future__ import annotations

import threading
from dataclasses import replace
from pathlib import Path

import numpy as np

from rag.index.log_follower import IndexFollower
from rag.index.vectors import FaissIndex
from rag.stores.chunks import ChunkStore
from rag.stores.chunks_postgres import PgChunkStore
from rag.types import ChunkDraft, Document, SentenceDraft


def doc(doc_id: str, name: str = "guide.md", collection: str = "default") -> Document:
    return Document(doc_id, name, "text/markdown", 10, collection=collection, state="processing")


def chunks(*texts: str) -> list[ChunkDraft]:
    return [ChunkDraft(i, t, i * 10, i * 10 + len(t), None, (), 2) for i, t in enumerate(texts)]


def indexed(store: ChunkStore, doc_id: str, *texts: str, name: str = "guide.md") -> Document:
    made = store.put_version(doc(doc_id, name))
    store.add_chunks(doc_id, chunks(*texts), np.eye(len(texts), 4, dtype=np.float32))
    store.promote(doc_id, None)
    return made


def test_a_new_version_replaces_the_old_in_one_step(store: ChunkStore) -> None:
    first = indexed(store, "v1", "alpha", "beta")
    assert (first.version, first.replaces) == (1, None)
    assert first.lineage.startswith("lineage-")  # fresh, never a document's id
    second = store.put_version(doc("v2"))
    assert (second.version, second.lineage, second.replaces) == (2, first.lineage, "v1")
    store.add_chunks("v2", chunks("alpha", "gamma", "delta"), np.ones((3, 4), np.float32))
    searchable = store.get_chunks(list(store.searchable_ids()))
    assert sorted(c.text for c in searchable.values()) == ["alpha", "beta"]  # old until swapped
    done = store.promote("v2", 3)
    assert done.chunk_count == 3 and done.replaced == ("v1",) and len(done.removed_chunks) == 2
    searchable = store.get_chunks(list(store.searchable_ids()))
    assert sorted(c.text for c in searchable.values()) == ["alpha", "delta", "gamma"]
    old, new = store.get_document("v1"), store.get_document("v2")
    assert old is not None and (old.state, old.chunk_count) == ("replaced", 0)
    assert new is not None and (new.state, new.reused_chunks, new.pages) == ("indexed", 1, 3)
    assert store.chunk_ids("v1") == [] and store.sentence_count("v1") == 0
    assert [(d.id, d.version) for d in store.versions("v1")] == [("v1", 1), ("v2", 2)]
    listed, total = store.list_documents()
    assert total == 1 and [d.id for d in listed] == ["v2"]


def test_names_are_per_collection_and_a_retry_keeps_its_version(store: ChunkStore) -> None:
    indexed(store, "a1", "alpha")
    other = store.put_version(doc("b1", collection="other"))
    assert other.version == 1 and other.lineage not in ("b1", store.versions("a1")[0].lineage)
    pending = store.put_version(doc("a2"))
    again = store.put_version(doc("a2"))  # the same upload retried
    assert pending.version == again.version == 2 and again.created_at == pending.created_at


def test_a_version_finishing_after_a_newer_one_is_replaced(store: ChunkStore) -> None:
    indexed(store, "v1", "one")
    store.put_version(doc("v2"))
    store.put_version(doc("v3"))
    store.add_chunks("v2", chunks("two"), np.ones((1, 4), np.float32))
    store.add_chunks("v3", chunks("three"), np.ones((1, 4), np.float32))
    assert sorted(store.promote("v3", None).replaced) == ["v1", "v2"]
    late = store.promote("v2", None)
    assert late.superseded and late.chunk_count == 0
    states = {d.id: d.state for d in store.versions("v1")}
    assert states == {"v1": "replaced", "v2": "replaced", "v3": "indexed"}
    texts = [c.text for c in store.get_chunks(list(store.searchable_ids())).values()]
    assert texts == ["three"] and store.chunk_ids("v2") == []


def test_versions_racing_on_one_name_get_distinct_numbers(store: ChunkStore) -> None:
    indexed(store, "v0", "zero")
    errors: list[BaseException] = []

    def upload(n: int) -> None:
        try:
            store.put_version(doc(f"r{n}"))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=upload, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    numbers = sorted(d.version for d in store.versions("v0"))
    assert numbers == [1, 2, 3, 4, 5, 6, 7]
    for n in range(6):
        store.add_chunks(f"r{n}", chunks(f"text {n}"), np.ones((1, 4), np.float32))
        store.promote(f"r{n}", None)
    current = [d for d in store.versions("v0") if d.state == "indexed"]
    assert len(current) == 1 and current[0].version == 7
    assert store.list_documents()[1] == 1


def test_deleting_removes_every_version(store: ChunkStore) -> None:
    indexed(store, "v1", "one")
    indexed(store, "v2", "two")
    indexed(store, "x1", "other", name="other.md")
    doc_ids, chunk_ids = store.delete_lineage("v1")  # an old version's id will do
    assert sorted(doc_ids) == ["v1", "v2"] and len(chunk_ids) == 1
    assert store.get_document("v2") is None and store.versions("v2") == []
    assert store.list_documents()[1] == 1 and store.delete_lineage("v1") == ([], [])


def test_vectors_are_found_by_text(store: ChunkStore) -> None:
    store.put_version(doc("v1"))
    vectors = np.arange(8, dtype=np.float32).reshape(2, 4)
    store.add_chunks("v1", chunks("alpha", "beta"), vectors)
    found = store.chunk_vectors_by_text("v1", ["beta", "nope", "beta"])
    assert list(found) == ["beta"] and np.array_equal(found["beta"], vectors[1])
    drafts = [SentenceDraft(0, 5, "| a |", None, (), "| h |"), SentenceDraft(6, 9, "b.", None, ())]
    store.add_sentences("v1", drafts, np.eye(2, 4, dtype=np.float32))
    by_text = store.sentence_vectors_by_text("v1", ["| a |", "b."])
    assert set(by_text) == {("| a |", "| h |"), ("b.", None)}
    assert np.array_equal(by_text["b.", None], np.eye(2, 4, dtype=np.float32)[1])


def test_a_swap_is_one_block_of_the_change_log(pg_url: str) -> None:
    store = PgChunkStore(pg_url)
    indexed(store, "v1", "one", "two")
    old = store.chunk_ids("v1")
    store.put_version(doc("v2"))
    new = store.add_chunks("v2", chunks("one", "three"), np.ones((2, 4), np.float32))
    before = store.log_position()
    store.promote("v2", None)
    changes = store.changes_since(before)
    assert [(op, cid) for _, op, cid in changes] == [
        *(("remove", cid) for cid in old), *(("add", cid) for cid in new)]
    assert [seq for seq, _, _ in changes] == list(range(before + 1, before + 5))
    store.close()


def test_a_replaced_documents_bytes_under_a_new_name_start_their_own_lineage(
    store: ChunkStore,
) -> None:
    """X (a.md) replaced by Y; X's bytes uploaded as b.md must not join or take Y's lineage."""
    indexed(store, "X", "ex", name="a.md")
    indexed(store, "Y", "why", name="a.md")
    back = indexed(store, "X", "ex again", name="b.md")
    x, y = store.get_document("X"), store.get_document("Y")
    assert x is not None and (x.state, x.filename, x.version) == ("indexed", "b.md", 1)
    assert y is not None and y.state == "indexed" and back.lineage != y.lineage
    assert [d.id for d in store.versions("Y")] == ["Y"]
    assert [d.id for d in store.versions("X")] == ["X"]
    doc_ids, _ = store.delete_lineage("X")
    assert doc_ids == ["X"] and store.get_document("Y") is not None


def test_duplicates_from_before_versions_are_retired_by_the_next_version(
    store: ChunkStore,
) -> None:
    """The release before versions stored a second row on re-upload of a name; each got its
    own lineage in the upgrade. The next version takes the newest's lineage and retires both."""
    for n, doc_id in enumerate(("d1", "d2")):  # as the upgrade leaves them
        store.put_document(replace(doc(doc_id), state="indexed", lineage=doc_id,
                                   created_at=100.0 + n))
        store.add_chunks(doc_id, chunks(f"dup {n}"), np.ones((1, 4), np.float32))
    new = store.put_version(doc("d3"))
    assert (new.lineage, new.version, new.replaces) == ("d2", 2, "d2")
    store.add_chunks("d3", chunks("fresh"), np.ones((1, 4), np.float32))
    done = store.promote("d3", None)
    assert sorted(done.replaced) == ["d1", "d2"] and len(done.removed_chunks) == 2
    listed, total = store.list_documents()
    assert total == 1 and [d.id for d in listed] == ["d3"]
    texts = [c.text for c in store.get_chunks(list(store.searchable_ids())).values()]
    assert texts == ["fresh"]


def test_a_promote_block_is_never_split_across_pages_of_the_log(pg_url: str) -> None:
    store = PgChunkStore(pg_url)
    indexed(store, "v1", "one", "two", "three")
    store.put_version(doc("v2"))
    store.add_chunks("v2", chunks("four", "five", "six"), np.ones((3, 4), np.float32))
    before = store.log_position()
    store.promote("v2", None)  # 3 removes and 3 adds in one transaction
    indexed(store, "w1", "seven", name="other.md")  # the next transaction's block
    page = store.changes_since(before, limit=2)
    assert [op for _, op, _ in page] == ["remove"] * 3 + ["add"] * 3
    rest = store.changes_since(page[-1][0], limit=2)
    assert [op for _, op, _ in rest] == ["add"]
    store.close()


def test_rows_an_older_release_inserts_have_a_usable_lineage(store: ChunkStore) -> None:
    """During a rolling upgrade, the release before versions inserts rows without lineage
    (PostgreSQL's default and SQLite's are ''): read as their own id, next versions work."""
    store.execute("INSERT INTO documents (id, filename, content_type, size, collection, "
                  "metadata, state, created_at, updated_at) VALUES "
                  "('old', 'o.md', 'text/markdown', 3, 'default', '{}', 'indexed', 1, 1)")
    store.execute("INSERT INTO documents (id, filename, content_type, size, collection, "
                  "metadata, state, created_at, updated_at) VALUES "
                  "('old2', 'p.md', 'text/markdown', 3, 'default', '{}', 'indexed', 1, 1)")
    got = store.get_document("old")
    assert got is not None and (got.lineage, got.version) == ("old", 1)
    assert [d.id for d in store.versions("old")] == ["old"]  # not every '' row
    new = store.put_version(doc("new", name="o.md"))
    assert (new.version, new.lineage, new.replaces) == (2, "old", "old")
    store.add_chunks("new", chunks("n"), np.ones((1, 4), np.float32))
    assert store.promote("new", None).replaced == ("old",)
    assert [d.id for d in store.versions("new")] == ["old", "new"]
    assert [d.id for d in store.versions("old2")] == ["old2"]


def test_the_log_follower_evicts_removed_chunks_from_the_read_cache(
    pg_url: str, tmp_path: Path
) -> None:
    """Another process swaps a new version in: applying its removals drops the old chunks
    from this process's read cache, so they are never served from it."""
    here, there = PgChunkStore(pg_url), PgChunkStore(pg_url)
    indexed(here, "v1", "one", "two")
    old = here.chunk_ids("v1")
    assert set(here.get_chunks(old)) == set(old)  # now cached here
    there.put_version(doc("v2"))
    there.add_chunks("v2", chunks("three"), np.ones((1, 4), np.float32))
    there.promote("v2", None)
    follower = IndexFollower(here, FaissIndex(tmp_path, "m", 4), threading.Lock())
    follower.catch_up()
    assert here.get_chunks(old) == {}  # read again: gone from the store
    assert follower.index.count == 1
    here.close()
    there.close()
