"""Evidence selection: the sentences of the retrieved chunks that answer the question.

Each sentence of the retrieved chunks is ranked against the question by dense similarity (its
vector was stored at ingest, and the question's vector comes from retrieval, so nothing is
encoded here) and by BM25 over those sentences, fused by reciprocal rank. The best few, with the
sentence before where they lean on it ("It was ...", "He ..."), become the prompt's evidence,
grouped by the chunk they come from.

`EvidenceSelector` does the ranking and choosing, `EvidenceStage` is the ask stage (and abstains
when nothing relevant was found); `Evidence` and `ScoredSentence` are in `rag.types`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import replace

import bm25s
import numpy as np
import numpy.typing as npt

from rag.ask.context import AskContext, Pieces, settle
from rag.ask.ranking import fuse
from rag.documents.sentences import sentence_spans
from rag.embedding import Embedder
from rag.stores.chunks import ChunkStore
from rag.types import NO_ANSWER, Evidence, ScoredChunk, ScoredSentence, Sentence

log = logging.getLogger(__name__)

# A sentence that starts like this reads better with the one before it.
_LEANS_BACK = re.compile(
    r"^(?:it|its|this|these|those|that|they|them|their|he|his|she|her|there|such|both|"
    r"however|also|then|thus|later|the latter|the former)\b",
    re.IGNORECASE,
)


_WORDS = re.compile(r"\w+")


def _states(text: str) -> bool:
    """Whether a span can state an answer: not a question, and not a heading or label (short,
    with no sentence end); table rows ("a | b") count as statements."""
    text = text.rstrip()
    if text.endswith("?"):
        return False
    words = len(_WORDS.findall(text))
    return words >= 4 and (text[-1] in ".!;:)\"'" or words >= 7 or " | " in text)


class EvidenceSelector:
    """Ranks the sentences of retrieved chunks against a question and picks the evidence."""

    def __init__(
        self, store: ChunkStore, embedder: Embedder, sentences: int = 4, rrf_k: int = 60,
        neighbours: bool = True,
    ) -> None:
        self.store = store
        self.embedder = embedder
        self.sentences = sentences
        self.rrf_k = rrf_k
        self.neighbours = neighbours

    def select(
        self, question: str, vector: npt.NDArray[np.float32], chunks: Sequence[ScoredChunk]
    ) -> Evidence:
        """`vector`: the question's embedding, (dim,) or (1, dim)."""
        found = self._candidates(chunks)
        candidates = [c for c in found if _states(c[0].text)] or found
        if not candidates:
            return Evidence((), ())
        ranked = rank(question, np.asarray(vector, dtype=np.float32).reshape(-1), candidates,
                      self.rrf_k)
        chosen = list(ranked[: self.sentences])
        if self.neighbours:
            chosen = _with_neighbours(chosen, found)
        return Evidence(tuple(ranked), _group(chosen, chunks))

    def _candidates(
        self, chunks: Sequence[ScoredChunk]
    ) -> list[tuple[Sentence, npt.NDArray[np.float32], int]]:
        """(sentence, vector, chunk index) for each sentence of the chunks, first chunk first."""
        out: list[tuple[Sentence, npt.NDArray[np.float32], int]] = []
        seen: set[int] = set()
        for index, scored in enumerate(chunks):
            c = scored.chunk
            found = self.store.sentences_within([(c.document_id, c.start, c.end)])
            if not found:  # a document stored before sentences were: split and embed it now
                found = self._split_now(scored)
            for sentence, vec in found:
                if sentence.id < 0 or sentence.id not in seen:  # windows overlap
                    seen.add(sentence.id)
                    out.append((sentence, vec, index))
        return out

    def _split_now(self, scored: ScoredChunk) -> list[tuple[Sentence, npt.NDArray[np.float32]]]:
        c = scored.chunk
        log.warning("document %s has no stored sentences; run `rag reindex --reembed` to store "
                    "them (splitting chunk %d now)", c.document_id, c.id)
        spans = sentence_spans(c.text)
        if not spans:
            return []
        sentences = [
            Sentence(id=-(c.id * 10_000 + i + 1), document_id=c.document_id, start=c.start + a,
                     end=c.start + b, text=c.text[a:b], page=c.page, title_path=c.title_path)
            for i, (a, b) in enumerate(spans)
        ]
        vectors = self.embedder.embed([s.text for s in sentences])
        return list(zip(sentences, vectors, strict=True))


def rank(
    question: str,
    vector: npt.NDArray[np.float32],
    candidates: Sequence[tuple[Sentence, npt.NDArray[np.float32], int]],
    rrf_k: int,
) -> list[ScoredSentence]:
    """Candidates best first: dense cosine and BM25 over the candidates, fused by RRF."""
    matrix = np.stack([vec for _, vec, _ in candidates])  # (n, dim), rows unit length
    dense = matrix @ vector  # (n,)
    sparse = bm25_scores(question, [s.text for s, _, _ in candidates])
    by_dense = sorted(range(len(candidates)), key=lambda i: (-dense[i], i))
    by_sparse = sorted((i for i in range(len(candidates)) if sparse[i] > 0),
                       key=lambda i: (-sparse[i], i))
    fused = fuse([(i, float(dense[i])) for i in by_dense],
                 [(i, float(sparse[i])) for i in by_sparse], rrf_k)
    return [
        ScoredSentence(candidates[i][0], score, float(dense[i]), float(sparse[i]),
                       candidates[i][2], rank)
        for rank, (i, score) in enumerate(fused, start=1)
    ]


def bm25_scores(question: str, texts: Sequence[str]) -> npt.NDArray[np.float32]:
    """BM25 score of each text for the question (0 where no query term occurs)."""
    corpus = bm25s.tokenize(list(texts), stopwords="en", show_progress=False)
    if not corpus.vocab:  # only stopwords and punctuation: bm25s cannot index that
        return np.zeros(len(texts), dtype=np.float32)
    model = bm25s.BM25()
    model.index(corpus, show_progress=False)
    terms = [t for t in bm25s.tokenize([question], stopwords="en", return_ids=False,
                                       show_progress=False)[0] if t in model.vocab_dict]
    if not terms:
        return np.zeros(len(texts), dtype=np.float32)
    return np.asarray(model.get_scores(terms), dtype=np.float32)


def _with_neighbours(
    chosen: list[ScoredSentence],
    candidates: Sequence[tuple[Sentence, npt.NDArray[np.float32], int]],
) -> list[ScoredSentence]:
    """Add the sentence before each chosen one that leans on it (when it is a candidate)."""
    by_end = {(s.document_id, s.end): (s, i) for s, _, i in candidates}
    ids = {c.sentence.id for c in chosen}
    out = list(chosen)
    for item in chosen:
        s = item.sentence
        if not _LEANS_BACK.match(s.text):
            continue
        for gap in range(0, 4):  # the previous sentence ends a few characters before
            found = by_end.get((s.document_id, s.start - gap))
            if found and found[0].id not in ids:
                ids.add(found[0].id)
                out.append(ScoredSentence(found[0], 0.0, 0.0, 0.0, item.chunk, 0))
                break
    return out


def _group(
    chosen: Sequence[ScoredSentence], chunks: Sequence[ScoredChunk]
) -> tuple[tuple[ScoredChunk, tuple[ScoredSentence, ...]], ...]:
    """Chosen sentences by chunk: chunks ordered by their best sentence, sentences by offset."""
    by_chunk: dict[int, list[ScoredSentence]] = {}
    for item in chosen:
        by_chunk.setdefault(item.chunk, []).append(item)
    def best_rank(index: int) -> int:
        ranks = [s.rank for s in by_chunk[index] if s.rank > 0]
        return min(ranks) if ranks else 10**9
    order = sorted(by_chunk, key=best_rank)
    return tuple(
        (chunks[i], tuple(sorted(by_chunk[i], key=lambda s: s.sentence.start))) for i in order
    )


class EvidenceStage:
    """Ask stage: the evidence sentences; abstains when nothing relevant was found.

    Abstention looks at both retrieval and evidence: the best chunk's dense cosine must reach
    `min_relevance`, and the best evidence sentence's must reach `min_evidence`.
    """

    name = "evidence"

    def __init__(self, selector: EvidenceSelector, min_relevance: float,
                 min_evidence: float) -> None:
        self.selector = selector
        self.min_relevance = min_relevance
        self.min_evidence = min_evidence

    def run(self, ctx: AskContext) -> Pieces:
        dense = [c.dense_score for c in ctx.chunks if c.dense_score is not None]
        if not dense or max(dense) < self.min_relevance or ctx.vector is None:
            yield NO_ANSWER
            return settle(ctx, NO_ANSWER, "abstained")
        evidence = self.selector.select(ctx.question, ctx.vector, ctx.chunks)
        ctx = replace(ctx, evidence=evidence)
        if evidence.best is None or evidence.best.dense < self.min_evidence:
            yield NO_ANSWER
            return settle(ctx, NO_ANSWER, "abstained")
        return ctx
