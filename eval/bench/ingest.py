"""`rag bench` ingest: the whole pipeline (parse, chunk, embed, store, index) over the corpus,
beside raw `SentenceTransformer.encode` of the same chunks.

(Throughput of `rag worker` processes over a queue is `python -m ingest.bench`, which drives
the worker side and stays with it in `ingest/`.)
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from eval.bench.measure import BenchOptions, Report, timed

if TYPE_CHECKING:
    from rag.service import RagService


def bench_ingest(
    service: RagService, options: BenchOptions, tmp: Path, report: Report
) -> dict[str, Any]:
    """Whole-pipeline ingest (parse, chunk, embed, store, index) beside raw encode of the chunks.

    Round 1 ingests into `service` (later benchmarks ask over it); each other round into a
    fresh data dir, since the same bytes twice are one document.
    """
    from rag.service import RagService

    files = sorted(p for p in options.corpus.rglob("*") if p.is_file())
    rounds = []
    for r in range(options.rounds):
        report("ingest", r, options.rounds)
        target = service
        if r:
            fresh = service.settings.model_copy(update={"data_dir": tmp / f"ingest-{r}"})
            target = RagService(fresh, embedder=service.embedder, generator=service.generator)
            target.load(generator=False)
        ms = sum(timed(partial(target.documents.ingest_file, p)) for p in files)
        rounds.append(ms)
        if target is not service:
            target.close()
    texts = chunk_texts(service)
    raw = [_raw_encode_ms(service, texts) for _ in range(options.rounds)]
    tokens = sum(len(service.embedder.tokenizer.encode(t)) for t in texts)
    seconds, raw_seconds = float(np.median(rounds)) / 1000, float(np.median(raw)) / 1000
    return {
        "files": len(files), "chunks": len(texts), "tokens": tokens,
        "rounds_ms": rounds, "raw_encode_rounds_ms": raw,
        "chunks_per_s": len(texts) / seconds, "tokens_per_s": tokens / seconds,
        "raw_encode_chunks_per_s": len(texts) / raw_seconds,
        "raw_encode_tokens_per_s": tokens / raw_seconds,
    }


def chunk_texts(service: RagService) -> list[str]:
    """The texts of every searchable chunk the service holds."""
    ids, texts = service.store.searchable_texts()
    return texts


def _raw_encode_ms(service: RagService, texts: list[str]) -> float:
    """`SentenceTransformer.encode` of the same texts with the same batch size."""
    model = service.embedder.model  # type: ignore[attr-defined]
    return timed(lambda: model.encode(texts, batch_size=service.settings.embedding_batch_size,
                                      normalize_embeddings=True, convert_to_numpy=True,
                                      show_progress_bar=False))
