"""Embedding batched across documents: concurrent jobs share model calls.

A worker runs several jobs at once (`RAG_WORKER_CONCURRENCY`). Each job embeds its own
document in batches of up to 64 chunks; a short document (a page or two) gives a handful of
chunks, too few to keep a GPU busy. `BatchingEmbedder` merges the `embed` calls that wait at
the same moment into one model call: whichever thread finds the model idle runs the calls
queued so far (its own first), up to `max_texts`, then the next group, until none are left.
A job alone runs exactly as without it; under load the batches grow by themselves.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from rag.embedding import Embedder, Vectors

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


@dataclass
class _Call:
    texts: Sequence[str]
    result: Future[Vectors] = field(default_factory=Future)


class BatchingEmbedder:
    """An Embedder that merges concurrent `embed` calls into shared model calls."""

    def __init__(self, inner: Embedder, max_texts: int = 256) -> None:
        self.inner = inner
        self.name = inner.name
        self.max_texts = max_texts
        self.calls = 0  # model calls made, and texts they held (for tests and benchmarks)
        self.texts = 0
        self._pending: list[_Call] = []
        self._lock = threading.Lock()
        self._busy = False

    @property
    def dimension(self) -> int:
        return self.inner.dimension

    @property
    def max_tokens(self) -> int:
        return self.inner.max_tokens

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        return self.inner.tokenizer

    def load(self) -> None:
        self.inner.load()

    def embed(self, texts: Sequence[str]) -> Vectors:
        """(len(texts), dimension) float32, as the wrapped embedder returns them."""
        call = _Call(texts)
        with self._lock:
            self._pending.append(call)
            lead = not self._busy
            self._busy = True
        if lead:
            self._drain()
        return call.result.result()

    def _drain(self) -> None:
        """Run queued calls in groups until none are left, then hand the model back."""
        while True:
            with self._lock:
                group = self._take()
                if not group:
                    self._busy = False
                    return
            self._run(group)

    def _take(self) -> list[_Call]:
        group: list[_Call] = []
        size = 0
        while self._pending and (not group or size + len(self._pending[0].texts) <= self.max_texts):
            call = self._pending.pop(0)
            group.append(call)
            size += len(call.texts)
        return group

    def _run(self, group: list[_Call]) -> None:
        texts = [t for call in group for t in call.texts]
        try:
            vectors = self.inner.embed(texts) if texts else np.zeros(
                (0, self.dimension), dtype=np.float32)
        except Exception as exc:  # every caller of this group sees the failure
            for call in group:
                call.result.set_exception(exc)
            return
        self.calls += 1
        self.texts += len(texts)
        start = 0
        for call in group:
            call.result.set_result(vectors[start : start + len(call.texts)])
            start += len(call.texts)
