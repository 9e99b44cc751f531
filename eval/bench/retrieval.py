"""`rag bench` retrieval: the retriever (dense-only and hybrid, query embedding included) over
generated indexes of each size, beside raw faiss on the same vectors."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from eval.bench.ingest import chunk_texts
from eval.bench.measure import BenchOptions, Report, percentiles, timed

if TYPE_CHECKING:
    from rag.service import RagService


def bench_retrieval(
    service: RagService, size: int, questions: Sequence[str], options: BenchOptions, tmp: Path,
    report: Report,
) -> dict[str, Any]:
    """Retriever latency over `size` generated chunks (query embedding included), dense-only and
    hybrid, beside raw faiss (exact inner product) on the same vectors."""
    from rag.ask.retrieve import Retriever
    from rag.types import Query

    report(f"retrieval {size}: generating", 0, 1)
    store, index, vectors = _generated_index(service, size, tmp / f"retrieval-{size}")
    queries = [questions[i % len(questions)] for i in range(options.repeats)]
    s = service.settings
    out: dict[str, Any] = {"chunks": size, "index_kind": index.kind, "top_k": s.top_k}
    for mode, hybrid in (("dense", False), ("hybrid", True)):
        retriever = Retriever(store, index, service.embedder, hybrid, s.rrf_k, s.candidates)
        # The first query builds the BM25 index of a hybrid retriever.
        out[f"{mode}_first_query_ms"] = timed(partial(retriever.retrieve,
                                                      Query(queries[0], s.top_k)))
        times = []
        for n, q in enumerate(queries):
            report(f"retrieval {size}: {mode}", n, len(queries))
            times.append(timed(partial(retriever.retrieve, Query(q, s.top_k))))
        out[f"{mode}_ms"] = percentiles(times)
    out |= _raw_faiss(service, vectors, queries, s.top_k)
    store.close()
    return out


def _generated_index(service: RagService, size: int, folder: Path) -> tuple[Any, Any, Any]:
    """A store and index of `size` chunks: random unit vectors, texts of corpus words."""
    from rag.index.vectors import FaissIndex
    from rag.stores.chunks import SqliteChunkStore
    from rag.types import ChunkDraft, Document

    s, dim = service.settings, service.embedder.dimension
    rng = np.random.default_rng(0)
    store = SqliteChunkStore(folder / "chunks.sqlite3")
    store.open()
    store.put_document(Document("generated", "generated.txt", "text/plain", 0, state="processing"))
    vectors = rng.standard_normal((size, dim), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    words = np.array(_vocabulary(service))
    for start in range(0, size, 5000):
        count = min(5000, size - start)
        drafts = [ChunkDraft(start + i, text, 0, len(text), None, (), 80)
                  for i, text in enumerate(_texts(rng, words, count))]
        store.add_chunks("generated", drafts, vectors[start : start + count])
    store.mark_indexed("generated", None)
    index = FaissIndex(folder / "index", s.embedding_model, dim,
                       s.approximate_index_threshold, s.ivf_nprobe, s.index_device)
    index.rebuild(store.searchable_vectors())
    index.save()
    return store, index, vectors


def _vocabulary(service: RagService) -> list[str]:
    """Words of the ingested corpus, so that BM25 finds matches for real questions."""
    words = {w.strip(".,:;()[]`\"'").lower() for t in chunk_texts(service) for w in t.split()}
    return sorted(w for w in words if w.isalpha())


def _texts(rng: np.random.Generator, words: Any, count: int) -> Iterator[str]:
    lengths = rng.integers(40, 120, size=count)
    for length in lengths:
        yield " ".join(rng.choice(words, size=int(length)))


def _raw_faiss(
    service: RagService, vectors: Any, queries: Sequence[str], k: int
) -> dict[str, Any]:
    """faiss.IndexFlatIP over the same vectors: search alone, and encode + search."""
    import faiss

    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    model = service.embedder.model  # type: ignore[attr-defined]

    def encode(q: str) -> Any:
        return model.encode([q], normalize_embeddings=True, convert_to_numpy=True,
                            show_progress_bar=False)

    embedded = [encode(q) for q in queries]
    search = [timed(partial(index.search, v, k)) for v in embedded]
    both = [timed(partial(_encode_and_search, encode, index, q, k)) for q in queries]
    return {"raw_faiss_search_ms": percentiles(search),
            "raw_encode_and_search_ms": percentiles(both)}


def _encode_and_search(encode: Callable[[str], Any], index: Any, query: str, k: int) -> Any:
    return index.search(encode(query), k)
