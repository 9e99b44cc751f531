"""Asking, end to end: the one place that validates an ask, consults the response cache,
threads it onto its conversation, runs the pipeline of stages and assembles the answer.

`AskService` is what the CLI, the API's ask and chat routes and the evaluation call.
"""

from __future__ import annotations

import collections.abc
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

from rag.access import EVERYONE, REFUSED, Reader
from rag.ask.answer import assemble_answer
from rag.ask.context import AskContext
from rag.ask.conversations import Conversations, Thread
from rag.ask.pipeline import AskPipeline, build_pipeline
from rag.ask.prompt import PROMPT_TEMPLATE_VERSION
from rag.ask.retrieve import Retriever
from rag.embedding import Embedder
from rag.errors import LOADING_HINT, InvalidInput, NotFound, NotReady
from rag.filters import MetadataFilter
from rag.generation.base import Generator
from rag.index.live import LiveIndex
from rag.settings import TOP_K_MAX, Settings
from rag.stores.chunks import ChunkStore
from rag.stores.response_cache import ResponseCache, cache_key
from rag.types import Answer, AnswerRecord, Query, ScoredChunk, Timings, Turn, new_id


@dataclass(frozen=True)
class AskRequest:
    question: str
    top_k: int | None = None
    collection: str | None = None
    document_ids: tuple[str, ...] = ()
    conversation_id: str | None = None  # continue this stored conversation
    history: tuple[Turn, ...] = ()  # or these earlier turns, sent by the client
    keep: bool = False  # without an id, start a stored conversation with this ask
    owner: str = ""  # whose conversation it is (a key id; "" in open mode)
    max_new_tokens: int | None = None  # a lower cap on the answer than the setting's
    answer_id: str | None = None  # the id to give the answer (default: a new one)
    reader: Reader | None = None  # whose documents it may read (None: everyone's)
    metadata: MetadataFilter | None = None  # only documents whose metadata match


class AskService:
    """Answers questions over the live index; `load()` once the index has loaded."""

    def __init__(
        self, settings: Settings, store: ChunkStore, index: LiveIndex, embedder: Embedder,
        generator: Generator, cache: ResponseCache, conversations: Conversations,
    ) -> None:
        self.settings = settings
        self.store = store
        self.index = index
        self.embedder = embedder
        self.generator = generator
        self.cache = cache
        self.conversations = conversations
        self.retriever: Retriever | None = None
        self.pipeline: AskPipeline | None = None

    def load(self) -> None:
        """Build the retriever and the pipeline over the loaded index."""
        s = self.settings
        self.retriever = Retriever(self.store, self.index.index, self.embedder, s.hybrid,
                                   s.rrf_k, s.candidates)
        self.pipeline = build_pipeline(s, self.retriever, self.store, self.embedder,
                                       self.generator)

    @property
    def model(self) -> str:
        """The name of the model that answers."""
        return self.generator.name

    def retrieve(self, query: Query, history: Sequence[Turn] = ()) -> list[ScoredChunk]:
        """The pipeline up to retrieval alone (a follow-up's rewrite included, where the
        pipeline has it): the chunks that answer `query` after `history`, best first."""
        if self.pipeline is None:
            raise NotReady("The service is still loading.", LOADING_HINT)
        ctx = self.pipeline.run_until(AskContext(query, history=tuple(history)), "retrieve")
        return list(ctx.chunks)

    def ask(self, request: AskRequest, stop: threading.Event | None = None) -> Answer:
        """The whole answer (see `ask_stream`)."""
        answer: Answer | None = None
        for item in self.ask_stream(request, stop):
            if isinstance(item, Answer):
                answer = item
        assert answer is not None
        return answer

    def ask_stream(
        self, request: AskRequest, stop: threading.Event | None = None
    ) -> Iterator[str | Answer]:
        """Yields the answer's text in pieces as it passes the check (a sentence at a time; a
        quote or an abstention that replaces the model's answer last), then the whole Answer;
        joined, the pieces are its text.

        A set `stop` ends generation at the next token; its answer is neither cached nor kept.
        """
        started = time.perf_counter()
        question = self.check_question(request.question)
        top_k = self.check_top_k(request.top_k)
        self._check_collection(request.collection, request.reader)
        thread = self.conversations.thread(request.conversation_id, request.history,
                                           request.keep, request.owner)
        self.index.refresh()
        limit = self.max_new_tokens(request.max_new_tokens)
        key = self._cache_key(question, top_k, limit, request, thread.history)
        cached = self._readable(self.cache.get(key), request.reader)
        if cached is not None:
            total = (time.perf_counter() - started) * 1000
            yield cached.text
            yield self._given(replace(cached, cached=True, timings=Timings(total_ms=total)),
                              request, thread)
            return
        query = Query(question, top_k, request.collection, request.document_ids,
                      request.reader, request.metadata)
        answer = yield from self._answer(AskContext(query, stop, thread.history, limit), started)
        if stop is None or not stop.is_set():
            self.cache.put(key, answer)
            answer = self._given(answer, request, thread)
        yield answer

    def _answer(
        self, ctx: AskContext, started: float
    ) -> collections.abc.Generator[str, None, Answer]:
        if self.pipeline is None:
            raise NotReady("The service is still loading.", LOADING_HINT)
        ctx = yield from self.pipeline.run(ctx)
        return assemble_answer(ctx, started, self.generator.name, self.index.index.version)

    def _readable(self, cached: Answer | None, reader: Reader | None) -> Answer | None:
        """A cached answer when `reader` may read every document it rests on (its key holds
        the reader, so this only turns away what changed since); else None, counted."""
        if cached is None or reader is None or reader.everything:
            return cached
        sources = {c.document_id for c in cached.citations} | {
            q.document_id for q in cached.evidence}
        if self.store.readable_documents(sources, reader) == sources:
            return cached
        REFUSED.add("cache")
        return None

    def _given(self, answer: Answer, request: AskRequest, thread: Thread) -> Answer:
        """The answer with its own id and conversation, kept for that conversation and for
        feedback."""
        answer = replace(answer, id=request.answer_id or new_id("ans"),
                         conversation_id=thread.conversation_id, note=thread.note)
        kept = self.conversations.keep(AnswerRecord(
            answer.id, answer.question, answer.text, thread.conversation_id, thread.history,
            tuple(dict.fromkeys(c.filename for c in answer.citations)), answer.mode,
            request.owner))
        if not kept and thread.conversation_id is not None:
            return replace(answer, conversation_id=None, note="The conversation could not be "
                           "kept (its store is unreachable); the next question starts anew.")
        return answer

    # The one place each part of an ask is checked

    def max_new_tokens(self, requested: int | None) -> int:
        """The ask's cap on the answer: `requested`, never above the setting (the budget's
        reserve)."""
        limit = self.settings.max_new_tokens
        if requested is not None:
            if requested < 1:
                raise InvalidInput(f"max_tokens {requested} is below 1.",
                                   "Ask for at least one token, or leave it out.")
            limit = min(limit, requested)
        return limit

    def check_top_k(self, top_k: int | None) -> int:
        """How many sources to retrieve: `top_k`, or the setting's."""
        top_k = top_k or self.settings.top_k
        if not 1 <= top_k <= TOP_K_MAX:
            raise InvalidInput(f"top_k {top_k} is out of range.", f"Use 1 to {TOP_K_MAX}.")
        return top_k

    def check_question(self, question: str) -> str:
        """The question, stripped; InvalidInput when empty or too long."""
        question = (question or "").strip()
        if not question:
            raise InvalidInput("The question is empty.", "Send a question with some words.")
        limit = self.settings.max_question_chars
        if len(question) > limit:
            raise InvalidInput(
                f"The question is {len(question)} characters long; the limit is {limit}.",
                "Shorten the question, or raise RAG_MAX_QUESTION_CHARS.",
            )
        return question

    def _check_collection(self, collection: str | None, reader: Reader | None) -> None:
        if collection and collection not in self.store.collections(reader or EVERYONE):
            raise NotFound(
                f"Collection {collection!r} does not exist.",
                "Leave it out to search everything, or upload documents into it first.",
            )

    def _cache_key(self, question: str, top_k: int, limit: int, request: AskRequest,
                   history: Sequence[Turn]) -> str:
        s, index = self.settings, self.index.index
        return cache_key(question, {
            "history": [[t.question, t.answer] for t in history],
            "followup_rewrite": s.followup_rewrite,
            "top_k": top_k, "collection": request.collection,
            "reader": (request.reader or EVERYONE).fingerprint(),
            "metadata": request.metadata.cache_key() if request.metadata else None,
            "documents": sorted(request.document_ids), "index": index.version,
            "index_id": index.index_id,
            "model": self.generator.name, "embedder": s.embedding_model,
            "max_new_tokens": limit, "temperature": s.temperature,
            "context": s.context_window, "template": PROMPT_TEMPLATE_VERSION,
            "hybrid": s.hybrid, "min_relevance": s.min_relevance,
            "answer_context": s.answer_context, "evidence_sentences": s.evidence_sentences,
            "min_evidence": s.min_evidence, "unsupported_answer": s.unsupported_answer,
            "min_support_overlap": s.min_support_overlap, "min_quote_score": s.min_quote_score,
            "stop_at_paragraph": s.stop_at_paragraph,
        })
