"""Internal data of the engine: frozen dataclasses passed between components."""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any, Literal

from rag.access import Reader

if TYPE_CHECKING:
    from rag.filters import MetadataFilter

# What the engine answers when no source is relevant; evaluation detects abstention by it.
NO_ANSWER = "The documents do not contain an answer to this question."

Rating = Literal["up", "down"]


def new_id(prefix: str) -> str:
    """A fresh random id with a prefix saying what it names (`conv`, `ans`, `fb`)."""
    return f"{prefix}_{secrets.token_hex(12)}"


@dataclass(frozen=True)
class Turn:
    """One earlier exchange of a conversation: what was asked and what was answered."""

    question: str
    answer: str


@dataclass(frozen=True)
class AnswerRecord:
    """An answer as given, kept for its conversation and for feedback on it."""

    id: str
    question: str
    answer: str
    conversation_id: str | None = None
    history: tuple[Turn, ...] = ()  # the turns the answer was given after
    documents: tuple[str, ...] = ()  # filenames of the cited documents, in citation order
    mode: str = "generated"
    owner: str = ""
    created_at: float = 0.0


@dataclass(frozen=True)
class Conversation:
    """A kept conversation: its answers as turns, oldest first (empty when only listed)."""

    id: str
    title: str  # its first question
    turns: tuple[AnswerRecord, ...]
    created_at: float
    updated_at: float
    expires_at: float
    owner: str = ""


@dataclass(frozen=True)
class Feedback:
    """A rating of one answer, with what was asked and answered (for evaluation suites)."""

    id: str
    answer_id: str
    rating: Rating
    question: str
    answer: str
    history: tuple[Turn, ...] = ()
    documents: tuple[str, ...] = ()
    comment: str = ""
    expected: str = ""
    created_at: float = 0.0


@dataclass(frozen=True)
class Element:
    """One piece of parsed text as the parser gives it (a title, paragraph, table, ...)."""

    text: str
    category: str = "NarrativeText"
    page: int | None = None
    title_path: tuple[str, ...] = ()


@dataclass(frozen=True)
class Document:
    """An uploaded file; `id` is the SHA-256 of its bytes (in a tenant other than `default`,
    or with access groups, of the tenant, the groups and that hash: `rag.access.document_id`).

    A file uploaded under the name of a current document of its collection, with other bytes,
    is the next `version` of that document's `lineage` (the first version's id; "" is read as
    its own id): it `replaces` that version once indexed, which then stays listed as
    `replaced`. `reused_chunks` of its chunks kept the replaced version's vectors.
    """

    id: str
    filename: str
    content_type: str
    size: int
    collection: str = "default"
    metadata: Mapping[str, Any] = field(default_factory=dict)
    pages: int | None = None
    chunk_count: int = 0
    state: str = "indexed"
    error: str | None = None
    created_at: float = 0.0
    updated_at: float = 0.0
    version: int = 1
    lineage: str = ""
    replaces: str | None = None
    reused_chunks: int = 0
    tenant: str = "default"  # the uploading key's tenant
    access: tuple[str, ...] = ()  # groups that may read it (empty: the whole tenant)


@dataclass(frozen=True)
class ChunkDraft:
    """A chunk before it has a store id."""

    ordinal: int
    text: str
    start: int
    end: int
    page: int | None
    title_path: tuple[str, ...]
    token_count: int


@dataclass(frozen=True)
class SentenceDraft:
    """A sentence before it has a store id; offsets into the document's parsed text."""

    start: int
    end: int
    text: str
    page: int | None
    title_path: tuple[str, ...]
    header: str | None = None  # a table row's header line (the row is the sentence)


@dataclass(frozen=True)
class Chunk:
    """A token window of one document; `text == parsed_text[start:end]`."""

    id: int
    document_id: str
    ordinal: int
    text: str
    start: int
    end: int
    page: int | None = None
    title_path: tuple[str, ...] = ()
    token_count: int = 0


@dataclass(frozen=True)
class ScoredChunk:
    """A retrieved chunk with its fused score and the scores that made it."""

    chunk: Chunk
    score: float
    dense_score: float | None = None
    bm25_score: float | None = None
    filename: str = ""


@dataclass(frozen=True)
class Citation:
    """A numbered source of an answer, pointing at a real span of a document."""

    number: int
    document_id: str
    filename: str
    chunk_id: int
    text: str
    start: int
    end: int
    page: int | None
    score: float


@dataclass(frozen=True)
class Sentence:
    """An evidence span of a document: `text == parsed_text[start:end]`.

    Sentences are cut at ingest (lines or fixed windows where the text has no sentence
    punctuation) and stored with their vectors, so asking encodes nothing but the question.
    """

    id: int
    document_id: str
    start: int
    end: int
    text: str
    page: int | None = None
    title_path: tuple[str, ...] = ()
    header: str | None = None  # a table row's header line (the row is the sentence)


@dataclass(frozen=True)
class Quote:
    """A piece of evidence given to the generator, as the answer shows it.

    `source` is the number `[n]` the prompt gave its chunk; `supports` is the number (from 1)
    of the answer sentence it supports, or None when it supports none.
    """

    text: str
    document_id: str
    filename: str
    start: int
    end: int
    page: int | None
    title_path: tuple[str, ...]
    score: float
    source: int
    supports: int | None = None


@dataclass(frozen=True)
class ShortAnswer:
    """The few words that answer a factual question: a span of the evidence where they occur
    there (`quote`: index into Answer.evidence; `start`, `end`: its document offsets)."""

    text: str
    quote: int | None = None
    start: int | None = None
    end: int | None = None


@dataclass(frozen=True)
class SentenceCheck:
    """One sentence of the answer, checked against the evidence."""

    text: str
    supported: bool
    overlap: float  # share of its content words found in the best supporting quote
    missing: tuple[str, ...] = ()  # numbers, dates and names in no cited source
    quote: int | None = None  # index into Answer.evidence of the best supporting quote


@dataclass(frozen=True)
class SentenceVerdict:
    """One sentence of a generated answer as the check judged it, and where it sits in it."""

    text: str  # the sentence, stripped
    sep: str  # the whitespace before it in the answer ("" for the first)
    check: SentenceCheck | None  # None: it makes no claim (a lone citation)
    best: int | None = None  # its best supporting evidence sentence (index into the check's)
    declines: bool = False  # it says the sources do not answer

    @property
    def passed(self) -> bool:
        """It makes a claim and the check supports it (a declining sentence never passes)."""
        return self.check is not None and self.check.supported


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass(frozen=True)
class Timings:
    """Milliseconds spent in each stage of one ask."""

    retrieve_ms: float = 0.0
    evidence_ms: float = 0.0
    prompt_ms: float = 0.0
    first_token_ms: float = 0.0
    first_sentence_ms: float = 0.0  # to the first checked text let out (streamed)
    generate_ms: float = 0.0
    check_ms: float = 0.0
    total_ms: float = 0.0
    stages: dict[str, float] = field(default_factory=dict)  # every ask stage by name, ms


# How an answer was made: the generator's text kept, a verified quote instead, or no answer.
AnswerMode = Literal["generated", "quote", "abstained"]


@dataclass(frozen=True)
class Answer:
    question: str
    text: str
    citations: tuple[Citation, ...]
    mode: AnswerMode = "generated"
    groundedness: float = 0.0  # share of answer sentences the evidence supports, in [0, 1]
    evidence: tuple[Quote, ...] = ()
    sentences: tuple[SentenceCheck, ...] = ()
    generated_text: str = ""  # what the generator said, also when `text` is a quote instead
    cached: bool = False
    usage: Usage = Usage()
    timings: Timings = Timings()
    used_chunk_ids: tuple[int, ...] = ()
    dropped_chunk_ids: tuple[int, ...] = ()
    model: str = ""
    index_version: int = 0
    id: str = ""  # this response's answer id (feedback names it)
    conversation_id: str | None = None  # the conversation it was given in, if one is kept
    note: str = ""  # said about the conversation, e.g. an expired one started afresh
    history_turns: int = 0  # earlier turns the prompt held
    search: str = ""  # the retrieval query, when a follow-up was rewritten
    short_answer: ShortAnswer | None = None  # a factual question's few answering words

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Answer:
        return cls(
            question=data["question"],
            text=data["text"],
            citations=tuple(Citation(**c) for c in data["citations"]),
            mode=data.get("mode", "generated"),
            groundedness=data.get("groundedness", 0.0),
            evidence=tuple(_quote(q) for q in data.get("evidence", ())),
            sentences=tuple(_check(c) for c in data.get("sentences", ())),
            generated_text=data.get("generated_text", ""),
            cached=data.get("cached", False),
            usage=Usage(**data.get("usage", {})),
            timings=Timings(**_known(Timings, data.get("timings", {}))),
            used_chunk_ids=tuple(data.get("used_chunk_ids", ())),
            dropped_chunk_ids=tuple(data.get("dropped_chunk_ids", ())),
            model=data.get("model", ""),
            index_version=data.get("index_version", 0),
            id=data.get("id", ""),
            conversation_id=data.get("conversation_id"),
            note=data.get("note", ""),
            history_turns=data.get("history_turns", 0),
            search=data.get("search", ""),
            short_answer=ShortAnswer(**data["short_answer"]) if data.get("short_answer") else None,
        )


def _quote(data: Mapping[str, Any]) -> Quote:
    return Quote(**{**data, "title_path": tuple(data.get("title_path", ()))})


def _check(data: Mapping[str, Any]) -> SentenceCheck:
    return SentenceCheck(**{**data, "missing": tuple(data.get("missing", ()))})


# --- what the ask stages hand each other (rag/ask/) -----------------------------------------


@dataclass(frozen=True)
class Query:
    """A question as retrieval takes it: the text, how many chunks, and what it may search."""

    text: str
    top_k: int = 5
    collection: str | None = None
    document_ids: tuple[str, ...] = ()
    reader: Reader | None = None  # whose documents it may search (None: everyone's)
    metadata: MetadataFilter | None = None  # and which of them, by their metadata


@dataclass(frozen=True)
class ScoredSentence:
    """A candidate evidence sentence with its fused score and the scores that made it."""

    sentence: Sentence
    score: float
    dense: float
    bm25: float
    chunk: int  # index of the retrieved chunk it was found in
    rank: int = 0  # 1 = best; 0 for a neighbour taken only to make a sentence read well


@dataclass(frozen=True)
class Evidence:
    """What evidence selection found: every candidate ranked, and the chosen sentences grouped
    by the chunk they come from (chunks in rank order, sentences in document order)."""

    ranked: tuple[ScoredSentence, ...]
    groups: tuple[tuple[ScoredChunk, tuple[ScoredSentence, ...]], ...]

    @property
    def best(self) -> ScoredSentence | None:
        return self.ranked[0] if self.ranked else None


@dataclass(frozen=True)
class Prompt:
    """A prompt ready to generate from, and which retrieved chunks it holds."""

    messages: tuple[dict[str, str], ...]
    input_ids: tuple[int, ...]
    sources: tuple[ScoredChunk, ...]
    dropped: tuple[ScoredChunk, ...]
    prompt_tokens: int
    budget: int
    # Per source, the evidence sentences the prompt shows (empty: the chunk's whole text).
    evidence: tuple[tuple[ScoredSentence, ...], ...] = ()
    turns: tuple[Turn, ...] = ()  # the earlier turns the prompt holds, oldest first
    dropped_turns: int = 0  # older turns left out for want of room


def _known(kind: type, data: Mapping[str, Any]) -> dict[str, Any]:
    """The items of `data` that `kind` has fields for: a cached answer written by a newer
    process (a rolling upgrade shares the Redis cache) may carry figures this one lacks."""
    names = {f.name for f in fields(kind)}
    return {k: v for k, v in data.items() if k in names}
