"""Hybrid retrieval: dense top-k and BM25 fused by reciprocal rank, overlapping windows merged.

`Retriever` searches any `VectorIndex` and a `BM25Index` over the chunk texts; `RetrieveStage` is
the ask stage. The fusion itself is `rag.ask.ranking.fuse`; `Query` is in `rag.types`.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import bm25s
import numpy as np
import numpy.typing as npt

from rag.ask.context import AskContext, quiet
from rag.ask.ranking import fuse
from rag.embedding import Embedder
from rag.index.vectors import VectorIndex
from rag.stores.chunks import ChunkStore
from rag.types import Chunk, Query, ScoredChunk

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Retrieval:
    """What one search found, and the question's embedding (later stages reuse it)."""

    chunks: list[ScoredChunk]
    vector: npt.NDArray[np.float32]  # (dim,)


class BM25Index:
    """bm25s over the searchable chunk texts, rebuilt when the index version changes."""

    def __init__(self) -> None:
        self.version = -1
        self.ids: npt.NDArray[np.int64] = np.zeros(0, dtype=np.int64)
        self._model: Any = None
        self._lock = threading.Lock()

    def refresh(self, store: ChunkStore, version: int) -> None:
        with self._lock:
            if version == self.version:
                return
            ids, texts = store.searchable_texts()
            model = None
            if texts:
                model = bm25s.BM25()
                model.index(bm25s.tokenize(texts, show_progress=False), show_progress=False)
            self.ids, self._model, self.version = ids, model, version

    def search(
        self, text: str, k: int, allowed: npt.NDArray[np.int64] | None
    ) -> list[tuple[int, float]]:
        """(chunk id, score) best first; only ids in `allowed` when given."""
        model, ids = self._model, self.ids
        if model is None:
            return []
        tokens = [t for t in bm25s.tokenize([text], return_ids=False, show_progress=False)[0]
                  if t in model.vocab_dict]
        if not tokens:
            return []
        mask = np.isin(ids, allowed).astype(np.float32) if allowed is not None else None
        k = min(k, len(ids))
        docs, scores = model.retrieve([tokens], k=k, show_progress=False, weight_mask=mask)
        return [(int(ids[d]), float(s)) for d, s in zip(docs[0], scores[0], strict=True) if s > 0]


class AllowedIds:
    """The chunk ids a query may search (`ChunkStore.readable_ids`), kept per reader and filter
    until the index changes: a narrow reader of a large index costs one lookup, not a query
    of every readable id, per ask. A few dozen entries: one per reader and filter in use."""

    def __init__(self, store: ChunkStore, size: int = 64) -> None:
        self.store = store
        self.size = size
        self._kept: OrderedDict[tuple[Any, ...], npt.NDArray[np.int64] | None] = OrderedDict()
        self._lock = threading.Lock()

    def ids(self, query: Query, index: VectorIndex) -> npt.NDArray[np.int64] | None:
        """What `readable_ids` gives for `query` now (None: every chunk)."""
        if not (query.reader or query.collection or query.document_ids or query.metadata):
            return None
        key = (index.index_id, index.version,
               query.reader.fingerprint() if query.reader else None, query.collection,
               query.document_ids,
               json.dumps(query.metadata.cache_key()) if query.metadata else None)
        with self._lock:
            if key in self._kept:
                self._kept.move_to_end(key)
                return self._kept[key]
        found = self.store.readable_ids(query)
        with self._lock:
            self._kept[key] = found
            while len(self._kept) > self.size:
                self._kept.popitem(last=False)
        return found


class Retriever:
    """Finds the chunks that answer a question."""

    def __init__(
        self,
        store: ChunkStore,
        index: VectorIndex,
        embedder: Embedder,
        hybrid: bool = True,
        rrf_k: int = 60,
        candidates: int = 30,
    ) -> None:
        self.store = store
        self.index = index
        self.embedder = embedder
        self.hybrid = hybrid
        self.rrf_k = rrf_k
        self.candidates = candidates
        self.bm25 = BM25Index()
        self.allowed = AllowedIds(store)

    def retrieve(self, query: Query) -> list[ScoredChunk]:
        """Top-k fused results, best first; overlapping windows of a document merged."""
        return self.search(query).chunks

    def search(self, query: Query) -> Retrieval:
        """`retrieve`, with the question's embedding."""
        # Only what the reader may read, narrowed by collection, documents and metadata, is
        # searched at all (None: everything), so a hidden document never takes a reader's slot.
        allowed = self.allowed.ids(query, self.index)
        n = max(self.candidates, query.top_k * 3)
        vector = self.embedder.embed([query.text])
        scores, ids = self.index.search(vector, n, allowed)
        dense = [(int(i), float(s)) for i, s in zip(ids[0], scores[0], strict=True) if i >= 0]
        sparse: list[tuple[int, float]] = []
        if self.hybrid:
            self.bm25.refresh(self.store, self.index.version)
            sparse = self.bm25.search(query.text, n, allowed)
        fused = fuse(dense, sparse, self.rrf_k)
        chunks = self._readable(self.store.get_chunks([cid for cid, _ in fused]), query)
        names = self.store.filenames(list({c.document_id for c in chunks.values()}))
        dense_by_id, sparse_by_id = dict(dense), dict(sparse)
        scored = [
            ScoredChunk(chunks[cid], score, dense_by_id.get(cid), sparse_by_id.get(cid),
                        names.get(chunks[cid].document_id, ""))
            for cid, score in fused if cid in chunks
        ]
        return Retrieval(merge_overlaps(scored)[: query.top_k], vector[0])

    def _readable(self, chunks: dict[int, Chunk], query: Query) -> dict[int, Chunk]:
        """`chunks` whose documents the reader may read now: a document promoted between the
        filter and the search (its first version, another tenant's) never slips in."""
        reader = query.reader
        if reader is None or reader.everything or not chunks:
            return chunks
        readable = self.store.readable_documents({c.document_id for c in chunks.values()},
                                                 reader)
        return {cid: c for cid, c in chunks.items() if c.document_id in readable}

    def best_dense_score(self, results: Sequence[ScoredChunk]) -> float:
        scores = [r.dense_score for r in results if r.dense_score is not None]
        return max(scores) if scores else float("-inf")


def merge_overlaps(results: Sequence[ScoredChunk]) -> list[ScoredChunk]:
    """Merge windows of one document whose spans overlap into the better-ranked one."""
    merged: list[ScoredChunk] = []
    for result in results:
        for i, kept in enumerate(merged):
            if _overlaps(kept.chunk, result.chunk):
                merged[i] = replace(
                    kept,
                    chunk=_union(kept.chunk, result.chunk),
                    dense_score=_max(kept.dense_score, result.dense_score),
                    bm25_score=_max(kept.bm25_score, result.bm25_score),
                )
                break
        else:
            merged.append(result)
    return merged


def _overlaps(a: Chunk, b: Chunk) -> bool:
    return a.document_id == b.document_id and a.start < b.end and b.start < a.end


def _union(a: Chunk, b: Chunk) -> Chunk:
    """Both texts are exact slices of one parsed text, so the union is exact too."""
    first, second = (a, b) if a.start <= b.start else (b, a)
    text = first.text
    if second.end > first.end:
        text += second.text[first.end - second.start :]
    return replace(
        a,
        text=text,
        start=first.start,
        end=max(first.end, second.end),
        page=first.page,
        token_count=a.token_count + b.token_count,
    )


def _max(a: float | None, b: float | None) -> float | None:
    values = [v for v in (a, b) if v is not None]
    return max(values) if values else None


class RetrieveStage:
    """Ask stage: the chunks that answer the question, and the question's vector."""

    name = "retrieve"

    def __init__(self, retriever: Retriever) -> None:
        self.retriever = retriever

    @quiet
    def run(self, ctx: AskContext) -> AskContext:
        # A rewritten follow-up's query also ranks the evidence (its vector goes on): on the
        # followups suite that abstained on 2 of 38 follow-ups, against 10 with the vector of
        # the question's own words.
        query = replace(ctx.query, text=ctx.search) if ctx.search else ctx.query
        found = self.retriever.search(query)
        return replace(ctx, chunks=tuple(found.chunks), vector=found.vector)
