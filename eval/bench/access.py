"""`rag bench` access: what reading only a tenant's documents costs a key, in recall and time.

The corpus (`access_corpus`, `BenchOptions.access_chunks` chunks, 10,000 by default; every
document is one chunk but the Notre Dame paragraphs, which take 1 to 3 windows):

- tenant `acme` holds exactly a tenth of the chunks: the 55 paragraphs of the notre-dame suite
  (eval/suites/notre-dame, whose 269 questions name the paragraph that answers them), and as
  filler, off-topic documents of 2 to 4 sentences of the shipped sample docs (rag/samples);
- nine other tenants hold the other nine tenths, all hard distractors: "remixes", each 2 to 4
  Notre Dame sentences taken from as many different paragraphs and shuffled (seeded), so every
  answering sentence is also in some hundred documents that `acme` may not read.

Chunks and sentences are embedded with the service's embedder (a text once, its vector reused)
and written straight into a store, as ingestion would have; a service over it builds the index.
A second store holds `acme`'s tenth alone. With the retriever's settings (hybrid, as served):

- recall@5 by the relevant filename over the Notre Dame questions: `restricted` (a key of
  `acme` over the whole corpus: the filter before ranking), `alone` (an index of `acme`'s tenth
  only: what the filter must match), `post_filter` (the top 5 of an unrestricted search, the
  unreadable dropped afterwards; `post_filter_top50` takes the first 5 readable of the top 50),
  `unrestricted` (a key that reads every tenant: the remixes take the paragraphs' places).
  Counted by `acme`'s files, `unrestricted` equals `post_filter` by construction (dropping
  others' results moves no file of `acme`); what filtering afterwards costs besides is slots:
  `post_filter_mean_results` of the 5 are left to the reader;
- retrieval p50/p95 of the restricted and the unrestricted key on the same questions, taken in
  turn (which goes first alternates), and their ratio;
- ask p50/p95 of both keys on `access_asks` questions (fresh answers: the section's service
  keeps no response cache, and the generator's prompt-prefix cache is emptied before each ask,
  so neither key reuses the other's prompt), alternating, at most `ASK_TOKENS` new tokens; the
  answers and abstentions of each, and the p50s over the questions both answered.

BM25 over the whole corpus weighs terms by the whole corpus's statistics, `alone` by `acme`'s:
the one way `restricted` and `alone` may differ.
"""

from __future__ import annotations

import hashlib
import itertools
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from eval.bench.measure import SAMPLES, BenchOptions, Report, percentiles
from eval.metrics import mean, recall_at_k
from eval.suites import Suite, SuiteItem, load_suite
from rag.access import EVERYONE, Reader, document_id
from rag.documents.processing import with_sentences
from rag.documents.sentences import sentence_spans
from rag.types import ChunkDraft, Document, Element, Query, ScoredChunk, SentenceDraft

if TYPE_CHECKING:
    from rag.documents.chunking import Chunker
    from rag.embedding import Embedder
    from rag.service import RagService
    from rag.types import Answer

ACME = "acme"  # the tenant whose key asks; it holds the Notre Dame paragraphs
OTHERS = tuple(f"tenant-{n}" for n in range(1, 10))
NOTRE_DAME = Path(__file__).parents[1] / "suites" / "notre-dame"
K = 5  # recall@K
WIDE = 50  # the larger candidate list of `post_filter_top50`
ASK_TOKENS = 32  # new tokens per ask, at most
EMBED_BATCH = 512
MAX_CHARS = 600  # a generated document stays one chunk (~150 tokens of the 200)


@dataclass(frozen=True)
class Written:
    """A document as ingestion would store it: its row, chunks and sentences."""

    document: Document
    chunks: tuple[ChunkDraft, ...]
    sentences: tuple[SentenceDraft, ...]


def bench_access(service: RagService, options: BenchOptions, tmp: Path,
                 report: Report) -> dict[str, Any]:
    """Every figure of the module docstring, over `options.access_chunks` chunks."""
    suite = load_suite(NOTRE_DAME)
    report("access: corpus", 0, 1)
    docs = access_corpus(suite, options.access_chunks, service.documents.chunker)
    vectors = embed_corpus(service.embedder, docs, report)
    full = corpus_service(service, tmp / "access-full", docs, vectors)
    alone = corpus_service(service, tmp / "access-alone",
                           [d for d in docs if d.document.tenant == ACME], vectors)
    tenants = {d.document.id: d.document.tenant for d in docs}
    try:
        out: dict[str, Any] = {
            "chunks": full.index.index.count, "acme_chunks": alone.index.index.count,
            "tenants": 1 + len(OTHERS), "index_kind": full.index.index.kind,
            "top_k": K, "hybrid": full.settings.hybrid}
        items = suite.items[: options.access_questions]
        out |= retrieval_figures(full, alone, items, tenants, report)
        out["ask"] = ask_figures(full, _spread(suite.items, options.access_asks), tenants,
                                 report)
    finally:
        full.close()
        alone.close()
    return out


# --- the corpus -------------------------------------------------------------------------


def access_corpus(suite: Suite, chunks: int, chunker: Chunker, seed: int = 0) -> list[Written]:
    """`chunks` chunks in all, a tenth of them `acme`'s (see the module docstring)."""
    rng = np.random.default_rng(seed)
    paragraphs = [(d.filename, d.text if d.text is not None else _read(d.path))
                  for d in suite.corpus]
    originals = [written(ACME, name, text, chunker) for name, text in paragraphs]
    have, target = sum(len(w.chunks) for w in originals), chunks // 10
    if have > target:
        raise ValueError(f"{chunks} chunks leave tenant {ACME} {target}, fewer than the "
                         f"{have} of the Notre Dame paragraphs: ask for {have * 10} or more.")
    nd = [_sentences(text) for _, text in paragraphs]
    samples = [pool for p in sorted(SAMPLES.iterdir()) if p.suffix in (".txt", ".md")
               if (pool := _sentences(_prose(p.read_text(encoding="utf-8"))))]
    filler = ((ACME, f"{ACME}/filler-{n:05d}.txt", _mix(rng, samples)) for n in itertools.count())
    remixes = ((OTHERS[n % len(OTHERS)], f"{OTHERS[n % len(OTHERS)]}/remix-{n:05d}.txt",
                _mix(rng, nd)) for n in itertools.count())
    return [*originals, *_fill(filler, target - have, chunker),
            *_fill(remixes, chunks - target, chunker)]


def written(tenant: str, filename: str, text: str, chunker: Chunker) -> Written:
    """One plain-text document of `tenant`, cut as ingestion cuts it."""
    sentences: list[SentenceDraft] = []
    chunks = tuple(chunker.chunk(with_sentences([Element(text)], sentences)))
    doc_id = document_id(hashlib.sha256(text.encode()).hexdigest(), tenant)
    return Written(Document(doc_id, filename, "text/plain", len(text.encode()), tenant=tenant,
                            state="processing"), chunks, tuple(sentences))


def _fill(texts: Iterator[tuple[str, str, str]], target: int,
          chunker: Chunker) -> list[Written]:
    """Documents of `texts` until they hold exactly `target` chunks (a repeat, or one that
    would overshoot, is passed over)."""
    out: list[Written] = []
    seen: set[str] = set()
    have = 0
    while have < target:
        doc = written(*next(texts), chunker)
        if doc.document.id in seen or have + len(doc.chunks) > target:
            continue
        seen.add(doc.document.id)
        out.append(doc)
        have += len(doc.chunks)
    return out


def _mix(rng: np.random.Generator, pools: Sequence[Sequence[str]]) -> str:
    """2 to 4 sentences, each of another pool (paragraph, file), shuffled; under MAX_CHARS."""
    picks = [int(p) for p in rng.choice(len(pools), size=int(rng.integers(2, 5)),
                                        replace=False)]  # in random order
    parts: list[str] = [pools[p][int(rng.integers(len(pools[p])))] for p in picks]
    text = parts[0]
    for part in parts[1:]:
        if len(text) + 1 + len(part) <= MAX_CHARS:
            text += " " + part
    return text


def _sentences(text: str) -> list[str]:
    """The sentences of `text` as evidence cuts them, of 30 to 300 characters."""
    found = [text[s:e] for s, e in sentence_spans(text)]
    return [s for s in found if 30 <= len(s) <= MAX_CHARS // 2 and s[0].isupper()
            and not any(mark in s for mark in ("`", "|", "#", "\n"))]


def _prose(text: str) -> str:
    """The prose paragraphs of a sample doc, each on one line (no headings, lists, code)."""
    paragraphs = [" ".join(p.split()).removeprefix("Q: ").removeprefix("A: ")
                  for p in text.split("\n\n")]
    return "\n".join(p for p in paragraphs if p[:1].isupper() and p[-1:] in ".?!")


def _read(path: Path | None) -> str:
    assert path is not None
    return path.read_text(encoding="utf-8")


def embed_corpus(embedder: Embedder, docs: Sequence[Written],
                 report: Report) -> dict[str, npt.NDArray[np.float32]]:
    """The vector of every chunk and sentence text (each text embedded once)."""
    texts = list(dict.fromkeys(
        [c.text for d in docs for c in d.chunks] + [s.text for d in docs for s in d.sentences]))
    vectors: dict[str, npt.NDArray[np.float32]] = {}
    for start in range(0, len(texts), EMBED_BATCH):
        report("access: embedding", start, len(texts))
        part = texts[start : start + EMBED_BATCH]
        vectors.update(zip(part, embedder.embed(part), strict=True))
    return vectors


def corpus_service(bench: RagService, folder: Path, docs: Sequence[Written],
                   vectors: dict[str, npt.NDArray[np.float32]]) -> RagService:
    """A loaded service over a fresh SQLite store holding `docs`, with no response cache."""
    from rag.service import RagService
    from rag.stores.chunks import SqliteChunkStore

    settings = bench.settings.model_copy(update={
        "data_dir": folder, "cache_size": 0, "redis_url": None, "database_url": None})
    settings.data_dir.mkdir(parents=True)
    store = SqliteChunkStore(settings.store_path)
    store.open()
    try:
        for doc in docs:
            doc_id = doc.document.id
            store.put_document(doc.document)
            store.add_chunks(doc_id, doc.chunks, np.stack([vectors[c.text] for c in doc.chunks]))
            if doc.sentences:
                store.add_sentences(doc_id, doc.sentences,
                                    np.stack([vectors[s.text] for s in doc.sentences]))
            store.mark_indexed(doc_id, None)
    finally:
        store.close()
    made = RagService(settings, embedder=bench.embedder, generator=bench.generator)
    made.load(generator=False)  # the bench's generator is loaded already
    return made


# --- retrieval --------------------------------------------------------------------------


def retrieval_figures(full: RagService, alone: RagService, items: Sequence[SuiteItem],
                      tenants: dict[str, str], report: Report) -> dict[str, Any]:
    """Recall@K of each way of keeping to `acme`'s documents, and the filter's latency."""
    search, search_alone = full.asking.retriever, alone.asking.retriever
    assert search is not None and search_alone is not None
    acme = Reader(ACME)
    for retriever in (search, search_alone):  # the first query builds the BM25 index
        retriever.retrieve(Query(items[0].question, K))
    recalls: dict[str, list[float | None]] = {k: [] for k in (
        "restricted", "alone", "post_filter", "post_filter_top50", "unrestricted")}
    times: dict[str, list[float]] = {"restricted": [], "unrestricted": []}
    foreign, kept = 0, []
    for n, item in enumerate(items):
        report("access: retrieval", n, len(items))
        found = _timed_pair(search, item.question, acme, times, first=n % 2 == 0)
        readable = [r for r in found["unrestricted"] if tenants[r.chunk.document_id] == ACME]
        wide = [r for r in search.retrieve(Query(item.question, WIDE))
                if tenants[r.chunk.document_id] == ACME]
        rankings = {"restricted": found["restricted"], "unrestricted": found["unrestricted"],
                    "alone": search_alone.retrieve(Query(item.question, K, reader=acme)),
                    "post_filter": readable, "post_filter_top50": wide[:K]}
        for name, ranking in rankings.items():
            recalls[name].append(recall_at_k([r.filename for r in ranking], item.relevant, K))
        foreign += sum(tenants[r.chunk.document_id] != ACME for r in found["restricted"])
        kept.append(len(readable))
    out: dict[str, Any] = {"questions": len(items)}
    out |= {f"{name}_recall_at_{K}": mean(values) for name, values in recalls.items()}
    out["post_filter_mean_results"] = float(np.mean(kept))  # of K, left after dropping
    out["restricted_foreign_results"] = foreign  # another tenant's chunks it was given: 0
    out |= {f"{name}_retrieval_ms": percentiles(values) for name, values in times.items()}
    out["retrieval_p50_ratio"] = (out["restricted_retrieval_ms"]["p50"]
                                  / out["unrestricted_retrieval_ms"]["p50"])
    return out


def _timed_pair(search: Any, question: str, reader: Reader, times: dict[str, list[float]],
                first: bool) -> dict[str, list[ScoredChunk]]:
    """The restricted and the unrestricted search of `question`, timed, in the order given."""
    queries = [("restricted", Query(question, K, reader=reader)),
               ("unrestricted", Query(question, K, reader=EVERYONE))]
    found = {}
    for name, query in queries if first else queries[::-1]:
        began = time.perf_counter()
        found[name] = search.retrieve(query)
        times[name].append((time.perf_counter() - began) * 1000)
    return found


# --- asking -----------------------------------------------------------------------------


def ask_figures(full: RagService, questions: Sequence[str], tenants: dict[str, str],
                report: Report) -> dict[str, Any]:
    """Fresh asks of each question by the `acme` key and by an unrestricted one, in turn."""
    from rag.ask.service import AskRequest

    readers = {"restricted": Reader(ACME), "unrestricted": EVERYONE}
    runs: dict[str, list[Answer]] = {name: [] for name in readers}
    clear = _prefix_clearer(full)
    for n, question in enumerate(questions):
        report("access: asks", n, len(questions))
        for name in list(readers) if n % 2 == 0 else list(readers)[::-1]:
            clear()
            runs[name].append(full.asking.ask(AskRequest(
                question, max_new_tokens=ASK_TOKENS, reader=readers[name])))
    out: dict[str, Any] = {"questions": len(questions),
                           "max_new_tokens": full.asking.max_new_tokens(ASK_TOKENS)}
    both = [i for i, pair in enumerate(zip(*runs.values(), strict=True))
            if all(a.mode != "abstained" for a in pair)]
    for name, answers in runs.items():
        out[name] = _side(answers, both, tenants)
    out["both_answered"] = len(both)
    out["p50_ratio"] = out["restricted"]["total_ms"]["p50"] / out["unrestricted"]["total_ms"][
        "p50"]
    mine, theirs = (out[k]["both_answered_p50_ms"] for k in readers)
    out["both_answered_p50_ratio"] = mine / theirs if mine and theirs else None
    return out


def _side(answers: Sequence[Answer], both: Sequence[int],
          tenants: dict[str, str]) -> dict[str, Any]:
    totals = [a.timings.total_ms for a in answers]
    cited = [c.document_id for a in answers for c in a.citations]
    return {
        "total_ms": percentiles(totals),
        "retrieve_p50_ms": float(np.median([a.timings.retrieve_ms for a in answers])),
        "answered": sum(a.mode != "abstained" for a in answers),
        "abstained": sum(a.mode == "abstained" for a in answers),
        "cached": sum(a.cached for a in answers),  # 0: every answer was made afresh
        "foreign_citations": sum(tenants[d] != ACME for d in cited),
        "both_answered_p50_ms": float(np.median([totals[i] for i in both])) if both else None,
    }


def _prefix_clearer(service: RagService) -> Callable[[], None]:
    """Empties the generator's prompt-prefix cache (a no-op for a remote generator)."""
    from rag.generation.local import LocalGenerator

    generator = service.generator
    return generator.clear_prefix_cache if isinstance(generator, LocalGenerator) else _nothing


def _nothing() -> None:
    """Nothing to clear."""


def _spread(items: Sequence[SuiteItem], count: int) -> list[str]:
    """`count` questions spread over the suite (about one per paragraph before repeats)."""
    step = max(1, len(items) // max(count, 1))
    return [item.question for item in items[::step][:count]]

