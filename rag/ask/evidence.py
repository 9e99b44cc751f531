"""Evidence selection: the sentences of the retrieved chunks that answer the question.

Each sentence of the retrieved chunks is ranked against the question by dense similarity (its
vector was stored at ingest, and the question's vector comes from retrieval, so nothing is
encoded here) and by BM25 over those sentences, fused by reciprocal rank. The best few, with the
sentence before where they lean on it ("It was ...", "He ..."), become the prompt's evidence,
grouped by the chunk they come from.

A table row is ranked as it reads with its table's header ("Extension: .pdf; Format: PDF"): its
vector was embedded so, and BM25 reads it so. A question that asks for a list ("Which
formats ...?") takes the rows of the table that answers it together, first: the table whose
header names what is asked, or whose row ranked among the best.

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

from rag.ask.claims import STOPWORDS, content_words
from rag.ask.context import AskContext, Pieces, settle
from rag.ask.ranking import fuse
from rag.documents.sentences import sentence_spans, with_header
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


# At most this many rows of one table are taken together for a list question.
MAX_TABLE_ROWS = 12
# Words that look plural after "what" but ask for no list ("What happens when ...").
_NOT_PLURAL = frozenset(["happens", "causes", "makes", "means", "takes", "uses", "needs",
                         "gets", "goes", "says", "does", "has", "is", "was", "this", "its"])
_OBJECT_STARTS = frozenset(["the", "a", "an", "this", "that", "these", "those", "its", "their",
                            "my", "your", "our", "his", "her"])
# Words of a question that compares things rather than asks for a list of them.
_COMPARES = frozenset(["difference", "differences", "differ", "between", "versus", "vs",
                       "compare", "compared", "comparison"])
# A table whose header names what a list question asks, but none of whose rows ranked among
# the best, answers it only when its best row's cosine to the question reaches this.
MIN_TABLE_SCORE = 0.35
_AUXILIARIES = frozenset(["are", "were", "can", "could", "do", "does", "did", "should", "will",
                          "would", "may", "might", "must", "have", "has", "need", "exist"])


def _states(sentence: Sentence) -> bool:
    """Whether a span can state an answer: not a question, and not a heading or label (short,
    with no sentence end); table rows ("a | b", a header's or not) count as statements."""
    text = sentence.text.rstrip()
    if text.endswith("?"):
        return False
    if sentence.header:
        return True
    words = len(_WORDS.findall(text))
    return words >= 4 and (text[-1] in ".!;:)\"'" or words >= 7 or " | " in text)


def asks_for_list(question: str) -> bool:
    """Whether a question asks for several things: "Which formats ...", "What file types
    ...", "What are the ...", "List ...", "Name the ...s", "Give me the ...s"; not "What are
    embeddings?" (what they are) nor "What are the differences between ..." (a comparison)."""
    # A capitalised word after the first is a name ("Which Kubernetes operator"), no plural.
    words = [w if n == 0 or w.islower() else "" for n, w in
             enumerate(_WORDS.findall(question))]
    words[:1] = [w.casefold() for w in words[:1]]
    if not words:
        return False
    if words[0] in ("list", "enumerate"):
        return True
    if words[0] in ("name", "tell", "give", "show") and words[1:2] != ["of"]:
        return any(_plural(w) for w in words[1:])
    if words[0] not in ("which", "what") or len(words) < 2 or set(words) & _COMPARES:
        return False
    if words[1] in ("are", "were"):
        return len(words) > 3  # "what are embeddings" asks what they are
    # "which formats can ...", not "what determines the ...": a verb takes an object
    if _plural(words[1]) and (len(words) == 2 or words[2] not in _OBJECT_STARTS):
        return True
    # "which file types are ...", not "which command rebuilds the ..."
    return (len(words) > 2 and words[1] not in STOPWORDS and _plural(words[2])
            and (len(words) == 3 or words[3] in _AUXILIARIES))


def _plural(word: str) -> bool:
    return (word.endswith("s") and not word.endswith(("ss", "us", "is")) and len(word) > 3
            and word not in STOPWORDS and word not in _NOT_PLURAL)


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
        candidates = [c for c in found if _states(c[0])] or found
        if not candidates:
            return Evidence((), ())
        ranked = rank(question, np.asarray(vector, dtype=np.float32).reshape(-1), candidates,
                      self.rrf_k)
        chosen = list(ranked[: self.sentences])
        if asks_for_list(question):
            chosen = with_table_rows(question, chosen, ranked)
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
    sparse = bm25_scores(question, [with_header(s) for s, _, _ in candidates])
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


def with_table_rows(
    question: str, chosen: list[ScoredSentence], ranked: Sequence[ScoredSentence]
) -> list[ScoredSentence]:
    """The rows of the table that answers a list question, then the rest of `chosen`, ranked
    anew in that order (the prompt shows the table first). The table is the best-ranked one
    with a row among those `chosen`, else one whose header names a key term of the question
    and whose best row's cosine reaches `MIN_TABLE_SCORE`; its rows are taken best-ranked
    first, at most `MAX_TABLE_ROWS`."""
    table = next((_table(item.sentence) for item in chosen if item.sentence.header), None)
    if table is None:
        terms = content_words(question)
        best: dict[tuple[str, str], float] = {}
        for item in ranked:
            key = _table(item.sentence)
            if key is not None:
                best[key] = max(best.get(key, -1.0), item.dense)
        table = next((key for key, score in best.items() if score >= MIN_TABLE_SCORE
                      and terms & content_words(key[1])), None)
    if table is None:
        return chosen
    rows = [item for item in ranked if _table(item.sentence) == table][:MAX_TABLE_ROWS]
    ids = {item.sentence.id for item in rows}
    rest = [item for item in chosen if item.sentence.id not in ids]
    return [replace(item, rank=n) for n, item in enumerate([*rows, *rest], start=1)]


def _table(sentence: Sentence) -> tuple[str, str] | None:
    """Which table a row is of (its document and header), None for a sentence of text."""
    return (sentence.document_id, sentence.header) if sentence.header else None


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
