"""Retrieval: RRF by hand, merging of overlapping windows, hybrid search with filters."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from rag.access import EVERYONE, Reader
from rag.ask.ranking import fuse
from rag.ask.retrieve import Retriever, merge_overlaps
from rag.errors import InvalidFilter
from rag.filters import MetadataFilter
from rag.index.vectors import FaissIndex
from rag.stores.chunks import SqliteChunkStore
from rag.types import Chunk, ChunkDraft, Document, Query, ScoredChunk


def test_rrf_by_hand() -> None:
    dense = [(1, 0.9), (2, 0.8), (3, 0.7)]
    sparse = [(3, 12.0), (4, 5.0)]
    fused = dict(fuse(dense, sparse, k=60))
    assert fused[1] == pytest.approx(1 / 61)
    assert fused[3] == pytest.approx(1 / 63 + 1 / 61)
    assert fused[4] == pytest.approx(1 / 62)
    assert [cid for cid, _ in fuse(dense, sparse, 60)] == [3, 1, 2, 4]


def chunk(cid: int, doc: str, start: int, text: str) -> Chunk:
    return Chunk(cid, doc, cid, text, start, start + len(text))


def test_overlapping_windows_of_one_document_merge() -> None:
    full = "0123456789abcdefghij"
    a = ScoredChunk(chunk(1, "d", 5, full[5:12]), 0.9, 0.8)
    b = ScoredChunk(chunk(2, "d", 0, full[0:8]), 0.5, 0.85)
    c = ScoredChunk(chunk(3, "e", 0, "other"), 0.4)
    d = ScoredChunk(chunk(4, "d", 15, full[15:20]), 0.3)
    merged = merge_overlaps([a, b, c, d])
    assert [m.chunk.id for m in merged] == [1, 3, 4]
    first = merged[0]
    assert (first.chunk.start, first.chunk.end, first.chunk.text) == (0, 12, full[0:12])
    assert first.score == 0.9 and first.dense_score == 0.85


FACTS = {
    "cats.txt": "Cats sleep about sixteen hours a day and purr when content.",
    "volcano.txt": "Mount Etna in Sicily is one of the most active volcanoes in Europe.",
    "bread.txt": "Sourdough bread rises with a starter of wild yeast and lactobacilli.",
    "code.txt": "The error code ZX-4471 means the flux capacitor overheated.",
}


@pytest.fixture()
def retriever(tmp_path: Path, embedder) -> Retriever:  # type: ignore[no-untyped-def]
    store = SqliteChunkStore(tmp_path / "s.sqlite3")
    index = FaissIndex(tmp_path / "i", "m", embedder.dimension, device="cpu")
    for n, (name, text) in enumerate(FACTS.items()):
        doc_id = f"doc{n}"
        store.put_document(Document(doc_id, name, "text/plain", len(text),
                                    collection="animals" if "cat" in name else "other"))
        ids = store.add_chunks(doc_id, [ChunkDraft(0, text, 0, len(text), None, (), 10)],
                               embedder.embed([text]))
        store.mark_indexed(doc_id, None)
        index.add(np.array(ids, dtype=np.int64), store.vectors(ids))
    index.save()
    return Retriever(store, index, embedder)


def test_dense_finds_paraphrase(retriever: Retriever) -> None:
    results = retriever.retrieve(Query("Which European mountain erupts often?", top_k=2))
    assert results[0].filename == "volcano.txt"
    assert results[0].dense_score is not None and results[0].dense_score > 0.3


def test_bm25_finds_rare_code(retriever: Retriever) -> None:
    results = retriever.retrieve(Query("ZX-4471", top_k=1))
    assert results[0].filename == "code.txt" and results[0].bm25_score


def test_filters_by_collection_and_document(retriever: Retriever) -> None:
    only = retriever.retrieve(Query("volcano in Sicily", top_k=3, collection="animals"))
    assert {r.filename for r in only} == {"cats.txt"}
    docs = retriever.retrieve(Query("volcano", top_k=3, document_ids=("doc2",)))
    assert {r.filename for r in docs} == {"bread.txt"}


def _tenanted(retriever: Retriever) -> None:
    """volcano.txt and code.txt belong to tenant `acme`, code.txt to its `ops` group only; the
    rest to `default`; each document's year in its metadata."""
    store = retriever.store
    for n, (tenant, access) in enumerate([("default", ()), ("acme", ()), ("default", ()),
                                          ("acme", ("ops",))]):
        doc = store.get_document(f"doc{n}")
        assert doc is not None
        store.put_document(replace(doc, tenant=tenant, access=access,
                                   metadata={"year": 2010 + n}))


def test_a_reader_searches_only_what_it_may_read_before_ranking(retriever: Retriever) -> None:
    _tenanted(retriever)
    acme, ops = Reader("acme"), Reader("acme", frozenset({"ops"}))
    # Its only readable document comes first, wherever it would rank among all of them.
    assert [r.filename for r in retriever.retrieve(Query("ZX-4471", 4, reader=acme))] == [
        "volcano.txt"]
    assert {r.filename for r in retriever.retrieve(Query("ZX-4471", 4, reader=ops))} == {
        "volcano.txt", "code.txt"}
    everyone = {r.filename for r in retriever.retrieve(Query("ZX-4471", 4, reader=EVERYONE))}
    assert everyone == set(FACTS)
    default = {r.filename for r in retriever.retrieve(Query("bread or cats", 4, reader=Reader()))}
    assert default == {"cats.txt", "bread.txt"}
    assert retriever.retrieve(Query("ZX-4471", 4, reader=Reader("nobody"))) == []


def test_a_reader_of_everything_indexed_is_not_filtered_at_all(retriever: Retriever) -> None:
    store = retriever.store
    assert store.readable_ids(Query("x", reader=Reader())) is None  # all are default's
    _tenanted(retriever)
    assert store.readable_ids(Query("x", reader=EVERYONE)) is None
    assert store.readable_ids(Query("x", reader=Reader("acme", all_groups=True))) is not None


def test_metadata_filters_narrow_the_search_before_ranking(retriever: Retriever) -> None:
    _tenanted(retriever)
    recent = MetadataFilter.parse({"year": {"$gte": 2012}})
    found = retriever.retrieve(Query("volcano in Sicily", 4, metadata=recent))
    assert {r.filename for r in found} == {"bread.txt", "code.txt"}
    both = retriever.retrieve(Query("volcano", 4, reader=Reader("acme"), metadata=recent))
    assert found and both == []  # code.txt is acme's, but only its ops group's
    with pytest.raises(InvalidFilter, match='"year"'):
        retriever.retrieve(Query("volcano", 4, metadata=MetadataFilter.parse(
            {"year": {"$gte": "a string"}})))


def test_a_document_indexed_during_the_search_is_still_not_read(retriever: Retriever) -> None:
    _tenanted(retriever)
    store, embed = retriever.store, retriever.embedder.embed
    for hidden in ("doc1", "doc3"):  # acme's, mid-reprocessing: the default reader sees all
        assert store.set_state(hidden, "processing")

    def embed_then_index(texts: list[str]) -> object:
        for hidden in ("doc1", "doc3"):  # indexed again between the filter and the search
            store.mark_indexed(hidden, None)
        return embed(texts)

    retriever.embedder.embed = embed_then_index  # type: ignore[method-assign,assignment]
    try:
        found = retriever.retrieve(Query("volcano ZX-4471", 4, reader=Reader()))
    finally:
        retriever.embedder.embed = embed  # type: ignore[method-assign]
    assert {r.filename for r in found} <= {"cats.txt", "bread.txt"}


def test_allowed_ids_are_kept_per_reader_until_the_index_changes(
    retriever: Retriever, monkeypatch: pytest.MonkeyPatch
) -> None:
    _tenanted(retriever)
    calls: list[Query] = []
    readable_ids = retriever.store.readable_ids
    monkeypatch.setattr(retriever.store, "readable_ids",
                        lambda q: calls.append(q) or readable_ids(q))
    acme, default = Reader("acme"), Reader()
    for _ in range(3):
        assert [r.filename for r in retriever.retrieve(Query("ZX-4471", 4, reader=acme))] == [
            "volcano.txt"]
        retriever.retrieve(Query("bread", 4, reader=default))
    assert len(calls) == 2  # once per reader
    retriever.retrieve(Query("ZX-4471", 4))  # everyone: nothing to look up
    assert len(calls) == 2
    retriever.index.mark_changed()  # a new index version: looked up again
    retriever.retrieve(Query("ZX-4471", 4, reader=acme))
    assert len(calls) == 3
