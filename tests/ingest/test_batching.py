"""Embedding batched across documents: concurrent calls share model calls, results unchanged."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import numpy as np
import pytest

from ingest.batching import BatchingEmbedder
from rag.embedding import Embedder, Vectors

pytestmark = pytest.mark.slow


class Gate:
    """Wraps the real embedder; holds its first call until the test opens the gate."""

    def __init__(self, inner: Embedder) -> None:
        self.inner = inner
        self.name = inner.name
        self.dimension = inner.dimension
        self.max_tokens = inner.max_tokens
        self.tokenizer = inner.tokenizer
        self.open = threading.Event()
        self.sizes: list[int] = []
        self.fail_next = False

    def load(self) -> None:
        self.inner.load()

    def embed(self, texts: Sequence[str]) -> Vectors:
        self.open.wait(30)
        self.sizes.append(len(texts))
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("device lost")
        return self.inner.embed(texts)


def texts_of(n: int) -> list[str]:
    return [f"Document {n} sentence {i} about the harbour and its {i} boats." for i in range(5)]


def run_concurrently(batcher: BatchingEmbedder, gate: Gate, callers: int) -> list[object]:
    results: list[object] = [None] * callers

    def call(n: int) -> None:
        try:
            results[n] = batcher.embed(texts_of(n))
        except Exception as exc:
            results[n] = exc

    threads = [threading.Thread(target=call, args=(n,)) for n in range(callers)]
    threads[0].start()
    while not batcher._busy:
        time.sleep(0.001)
    for t in threads[1:]:
        t.start()
    while len(batcher._pending) < callers - 1:  # everyone else waits behind the first call
        threading.Event().wait(0.001)
    gate.open.set()
    for t in threads:
        t.join(30)
    return results


def test_concurrent_calls_are_merged_and_results_unchanged(embedder) -> None:  # type: ignore[no-untyped-def]
    gate = Gate(embedder)
    batcher = BatchingEmbedder(gate, max_texts=256)
    results = run_concurrently(batcher, gate, callers=6)
    assert gate.sizes == [5, 25]  # the first call alone, then the five waiting ones together
    assert batcher.calls == 2 and batcher.texts == 30
    for n, vectors in enumerate(results):
        assert isinstance(vectors, np.ndarray) and vectors.shape == (5, embedder.dimension)
        np.testing.assert_allclose(vectors, embedder.embed(texts_of(n)), atol=1e-5)


def test_groups_respect_max_texts(embedder) -> None:  # type: ignore[no-untyped-def]
    gate = Gate(embedder)
    batcher = BatchingEmbedder(gate, max_texts=10)
    results = run_concurrently(batcher, gate, callers=5)
    assert gate.sizes == [5, 10, 10]
    assert all(isinstance(r, np.ndarray) for r in results)


def test_a_failed_model_call_fails_its_callers_only(embedder) -> None:  # type: ignore[no-untyped-def]
    gate = Gate(embedder)
    batcher = BatchingEmbedder(gate)
    gate.fail_next = True
    results = run_concurrently(batcher, gate, callers=3)
    assert isinstance(results[0], RuntimeError)
    assert all(isinstance(r, np.ndarray) for r in results[1:])
    assert batcher.embed(["still works"]).shape == (1, embedder.dimension)
    assert not batcher._busy
