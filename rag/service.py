"""Wiring: the one place that builds the engine's parts and runs ingest, delete and ask."""

from __future__ import annotations

import collections.abc
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from rag.ask.check import CheckStage
from rag.ask.evidence import EvidenceSelector, EvidenceStage
from rag.ask.generate import GenerateStage
from rag.ask.pipeline import AskContext, AskPipeline
from rag.ask.prompt import PROMPT_TEMPLATE_VERSION, PromptStage
from rag.ask.retrieve import Query, Retriever, RetrieveStage
from rag.ask.rewrite import FollowupStage
from rag.documents import parsing
from rag.documents.chunking import ChunkDraft, Chunker, check_window, element_offsets
from rag.documents.detection import KINDS, inspect_file
from rag.documents.sentences import SentenceDraft, sentence_spans
from rag.embedding import Embedder, build_embedder
from rag.errors import (
    EmptyDocument,
    IndexUnreadable,
    InvalidInput,
    NotFound,
    NotReady,
    RagError,
)
from rag.generation.base import Generator, build_generator
from rag.index.vectors import FaissIndex, read_manifest
from rag.settings import Settings
from rag.stores.chunks import ChunkStore, build_store
from rag.stores.conversations import (
    AnswerRecord,
    Conversations,
    Thread,
    Turn,
    build_conversations,
    new_id,
)
from rag.stores.response_cache import ResponseCache, build_cache, cache_key
from rag.stores.uploads import Uploads, build_uploads, sha256_file
from rag.types import Answer, Citation, Document, Element, ScoredChunk, Timings, Usage

if TYPE_CHECKING:
    from rag.index.log_follower import IndexFollower

log = logging.getLogger(__name__)

EMBED_BATCH = 64
WRITER_LOCK = "rag:index-writer"

Progress = Callable[[str, int, int | None], None]
T = TypeVar("T")


def _no_progress(stage: str, done: int, total: int | None) -> None:
    """Default progress callback: ignore."""


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


class RagService:
    """The engine behind the CLI, the API and the worker."""

    def __init__(
        self,
        settings: Settings,
        embedder: Embedder | None = None,
        generator: Generator | None = None,
    ) -> None:
        """Cheap: builds parts; `load()` does the heavy work. Parts may be shared in-process."""
        self.settings = settings
        self.store: ChunkStore = build_store(settings)
        self.uploads: Uploads = build_uploads(settings)
        self.embedder: Embedder = embedder or build_embedder(settings)
        self.generator: Generator = generator or build_generator(settings)
        self.cache: ResponseCache = build_cache(
            settings.redis_url, settings.cache_size, settings.cache_ttl_s
        )
        self.conversations = Conversations(
            build_conversations(settings.redis_url, settings.conversations_path,
                                settings.conversation_ttl_s, settings.database_url),
            settings.max_history_turns)
        self.index: FaissIndex | None = None
        self.retriever: Retriever | None = None
        self.pipeline: AskPipeline | None = None
        self.chunker: Chunker | None = None
        self.follower: IndexFollower | None = None  # with PostgreSQL, in serving processes
        self._local_writer = threading.Lock()
        self._last_version_check = 0.0

    # Start-up

    def load(self, generator: bool = True, fresh_index: bool = False, follow: bool = True) -> None:
        """Load models and the index; rebuild the index from the store if they disagree.

        `fresh_index` skips the saved index (for `reindex` after an embedding-model change).
        With PostgreSQL, `follow` builds this process's own index and keeps it current from
        the change log; a worker (`follow=False`) writes to the store only and has none.
        """
        self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.store.open()
        self.uploads.open()
        self.conversations.store.open()
        self.embedder.load()
        check_window(self.settings.chunk_size, self.settings.chunk_overlap,
                     self.embedder.max_tokens)
        self.chunker = Chunker(self.embedder.tokenizer, self.settings.chunk_size,
                               self.settings.chunk_overlap)
        s = self.settings
        self.index = FaissIndex(s.index_dir, s.embedding_model, self.embedder.dimension,
                                s.approximate_index_threshold, s.ivf_nprobe, s.index_device)
        if s.database_url:
            if follow:
                self._follow(self.index, fresh_index)
        else:
            readable = fresh_index or self._load_index(self.index)
            with self.store.readable():
                searchable = self.store.searchable_count()
            if not readable or (not fresh_index and self.index.count != searchable):
                with self.writer():
                    self._rebuild_index()
        self.retriever = Retriever(self.store, self.index, self.embedder, s.hybrid, s.rrf_k,
                                   s.candidates)
        self.pipeline = self._pipeline(self.retriever)
        if generator:
            self.generator.load()

    def _follow(self, index: FaissIndex, fresh: bool) -> None:
        """Resume the saved index from the change log, or build it from the store; then
        follow the log in a thread."""
        from rag.index.log_follower import IndexFollower
        from rag.stores.pg_store import PgChunkStore

        assert isinstance(self.store, PgChunkStore)
        s = self.settings
        follower = IndexFollower(self.store, index, self._local_writer, s.index_catchup_s,
                                 s.index_save_every_s, s.index_log_keep_s)
        started = time.perf_counter()
        resumed = not fresh and self._load_index(index) and follower.can_resume()
        if resumed:
            follower.catch_up()
            resumed = index.count == self.store.searchable_count()
        if not resumed:
            follower.rebuild()
        log.info("index %s: %d vectors at change %d in %.2f s",
                 "caught up" if resumed else "built from the store", index.count,
                 index.log_seq, time.perf_counter() - started)
        follower.start()
        self.follower = follower

    def close(self) -> None:
        """Stop following the log (saving the index), close the stores."""
        if self.follower is not None:
            self.follower.stop()
            self.follower = None
        self.store.close()
        self.conversations.store.close()

    def _load_index(self, index: FaissIndex) -> bool:
        """Read the saved index; False when it is corrupt or truncated (to be rebuilt)."""
        try:
            index.load()
        except IndexUnreadable as exc:
            log.warning("%s; rebuilding the index from the chunk store", exc.message)
            return False
        return True

    def _rebuild_index(self) -> None:
        index = self._index()
        log.warning("index (%d vectors) disagrees with the chunk store (%d); rebuilding",
                    index.count, self.store.searchable_count())
        index.rebuild(self.store.searchable_vectors())
        index.save()

    def reindex(self, reembed: bool = False) -> tuple[int, list[str]]:
        """Rebuild the index from the stored vectors, or re-process every upload (`reembed`).

        Returns (documents indexed, ids that failed).
        """
        docs, _ = self.store.list_documents(limit=1_000_000)
        if self.settings.database_url and not reembed:  # each process builds its own
            if self.follower is not None:
                self.follower.rebuild()
            return sum(d.state == "indexed" for d in docs), []
        if not reembed:
            with self.writer():
                index = self._index()
                index.rebuild(self.store.searchable_vectors())
                index.save()
            return sum(d.state == "indexed" for d in docs), []
        if not self.settings.database_url:
            with self.writer():
                self._index().rebuild([])
                self._index().save()
        failed = []
        for doc in docs:
            try:
                self.process_document(doc.id)
            except RagError as exc:
                log.warning("re-indexing %s (%s) failed: %s", doc.filename, doc.id, exc)
                failed.append(doc.id)
        self.cache.clear()
        return len(docs) - len(failed), failed

    def _index(self) -> FaissIndex:
        if self.index is None:
            raise NotReady("The index is not loaded yet.", "Wait for /ready, then retry.")
        return self.index

    @contextlib.contextmanager
    def writer(self) -> Iterator[None]:
        """One writer changes the index at a time: across processes, a Redis lock held as a
        short lease that the holder renews, so a holder that dies blocks others for seconds.
        With PostgreSQL every process has its own index: the lock is this process's."""
        if not self.settings.redis_url or self.settings.database_url:
            with self._local_writer:
                yield
            return
        import redis

        client = redis.Redis.from_url(self.settings.redis_url)
        lease = self.settings.writer_lease_s
        lock = client.lock(WRITER_LOCK, timeout=lease, blocking_timeout=900, thread_local=False)
        if not lock.acquire():
            raise NotReady("Another process has held the index writer for 15 minutes.",
                           "Check the workers' logs, then retry.")
        done = threading.Event()
        renewer = threading.Thread(target=_renew, args=(lock, lease, done),
                                   name="rag-writer-lease", daemon=True)
        renewer.start()
        try:
            self.refresh_index(force=True)
            yield
        finally:
            done.set()
            renewer.join()
            with contextlib.suppress(redis.exceptions.LockError):
                lock.release()

    def refresh_index(self, force: bool = False) -> None:
        """Pick up an index version saved by another process (checked at most every 0.5 s);
        with PostgreSQL, `force` applies the change log now."""
        if self.settings.database_url:
            if force and self.follower is not None:
                self.follower.catch_up()
            return
        now = time.monotonic()
        if not force and now - self._last_version_check < 0.5:
            return
        self._last_version_check = now
        index = self._index()
        manifest = read_manifest(index.directory)
        if manifest is not None and manifest.version != index.version:
            index.load()

    # Ingestion

    def ingest_file(
        self,
        path: Path,
        filename: str | None = None,
        collection: str = "default",
        metadata: Mapping[str, Any] | None = None,
        progress: Progress = _no_progress,
    ) -> Document:
        """Parse, chunk, embed and index one file; the same bytes twice are one document."""
        name = filename or path.name
        kind = inspect_file(path, name, self.settings)  # as intake checks an API upload
        size = path.stat().st_size
        doc_id = sha256_file(path)
        existing = self.store.get_document(doc_id)
        if existing is not None and existing.state == "indexed":
            return existing
        self.uploads.keep(path, doc_id)
        doc = Document(id=doc_id, filename=name, content_type=parsing.SUPPORTED[kind], size=size,
                       collection=collection, metadata=dict(metadata or {}), state="processing")
        self.store.put_document(doc)
        return self.process_document(doc_id, progress)

    def process_document(
        self, doc_id: str, progress: Progress = _no_progress,
        timings: dict[str, float] | None = None,
    ) -> Document:
        """Run the pipeline for a stored document; on failure it is marked failed and raised.

        `timings`, when given, is filled while it runs with seconds per stage (parse, chunk,
        embed, index). A progress callback may raise to stop the job; it is called inside the
        index writer after `mark_indexed` and before the vectors are added, so raising there
        still leaves nothing half-indexed.
        """
        doc = self.store.get_document(doc_id)
        if doc is None:
            raise InvalidInput(f"Document {doc_id} is unknown.", "Upload it first.")
        self.store.set_state(doc_id, "processing")
        self._clear_previous(doc_id)  # a retried job starts clean
        clock = timings if timings is not None else {}
        try:
            pages = self._chunk_and_embed(doc, progress, clock)
            started = time.perf_counter()
            if self.settings.database_url:  # searchable once committed: the log does the rest
                progress("index", 0, 1)
                self.store.mark_indexed(doc_id, pages)
                progress("index", 1, 1)
                self.refresh_index(force=True)
            else:
                with self.writer():
                    self.store.mark_indexed(doc_id, pages)
                    progress("index", 0, 1)
                    self._add_to_index(doc_id)
                    progress("index", 1, 1)
            clock["index"] = time.perf_counter() - started
        except RagError as exc:
            self.store.clear_chunks(doc_id)
            self.store.set_state(doc_id, "failed", str(exc))
            raise
        except Exception as exc:
            self.store.clear_chunks(doc_id)
            self.store.set_state(doc_id, "failed", f"{type(exc).__name__}: {exc}")
            raise
        result = self.store.get_document(doc_id)
        assert result is not None
        return result

    def _chunk_and_embed(
        self, doc: Document, progress: Progress, clock: dict[str, float]
    ) -> int | None:
        """Stream elements -> windows and sentences -> vectors -> store, in bounded memory;
        returns the pages."""
        with self.uploads.local(doc.id) as path:
            return self._chunk_and_embed_file(doc, path, progress, clock)

    def _chunk_and_embed_file(
        self, doc: Document, path: Path, progress: Progress, clock: dict[str, float]
    ) -> int | None:
        assert self.chunker is not None, "call load() first"
        pages = {"high": 0}
        batch: list[ChunkDraft] = []
        sentences: list[SentenceDraft] = []
        done = 0
        progress("parse", 0, None)
        kind = KINDS.get(doc.content_type)  # detected at intake (None: an older document)
        parsed = _note_pages(parsing.parse(path, doc.filename, self.settings, kind), pages)
        elements = _with_sentences(_timed(parsed, clock, "parse"), sentences)
        for draft in _timed(self.chunker.chunk(elements), clock, "chunk"):
            batch.append(draft)
            if len(batch) >= EMBED_BATCH:
                progress("chunk", done + len(batch), None)
                done += self._embed_batch(doc.id, batch, clock)
                self._embed_sentences(doc.id, sentences, clock)
                progress("embed", done, None)
                batch = []
        clock["chunk"] = clock.get("chunk", 0.0) - clock.get("parse", 0.0)  # parse ran inside
        if batch:
            done += self._embed_batch(doc.id, batch, clock)
        self._embed_sentences(doc.id, sentences, clock)
        if done == 0:
            raise EmptyDocument(
                f"{doc.filename!r} holds no text to index.", "Upload a file with text in it."
            )
        progress("embed", done, done)
        return pages["high"] or None

    def _embed_batch(
        self, doc_id: str, batch: Sequence[ChunkDraft], clock: dict[str, float]
    ) -> int:
        started = time.perf_counter()
        vectors = self.embedder.embed([d.text for d in batch])
        self.store.add_chunks(doc_id, batch, vectors)
        clock["embed"] = clock.get("embed", 0.0) + time.perf_counter() - started
        return len(batch)

    def _embed_sentences(
        self, doc_id: str, sentences: list[SentenceDraft], clock: dict[str, float]
    ) -> None:
        """Embed and store the sentences collected so far, then forget them."""
        if not sentences:
            return
        started = time.perf_counter()
        for start in range(0, len(sentences), EMBED_BATCH * 4):
            part = sentences[start : start + EMBED_BATCH * 4]
            self.store.add_sentences(doc_id, part, self.embedder.embed([s.text for s in part]))
        sentences.clear()
        clock["embed"] = clock.get("embed", 0.0) + time.perf_counter() - started

    def _clear_previous(self, doc_id: str) -> None:
        """Drop chunks (and any vectors) an interrupted earlier attempt left behind."""
        ids = self.store.chunk_ids(doc_id)
        if ids and not self.settings.database_url:
            with self.writer():
                index = self._index()
                before = index.count
                index.remove(np.array(ids, dtype=np.int64))
                if index.count != before:
                    index.save()
        self.store.clear_chunks(doc_id)

    def _add_to_index(self, doc_id: str) -> None:
        index = self._index()
        ids = np.array(self.store.chunk_ids(doc_id), dtype=np.int64)
        for start in range(0, len(ids), 4096):
            part = ids[start : start + 4096]
            index.add(part, self.store.vectors(part))
        if index.needs_approximate():
            index.rebuild(self.store.searchable_vectors())
        index.save()

    def delete_document(self, doc_id: str) -> bool:
        """Remove a document, its vectors, chunks, upload and cached answers; idempotent."""
        if self.store.get_document(doc_id) is None:
            return False
        if self.settings.database_url:
            self.store.delete_document(doc_id)  # its removal goes out through the change log
            self.refresh_index(force=True)
        else:
            with self.writer():
                ids = self.store.delete_document(doc_id)
                index = self._index()
                index.remove(np.array(ids, dtype=np.int64))
                index.save()
        self.uploads.remove(doc_id)
        self.cache.forget_documents([doc_id])
        return True

    # Asking

    def ask(self, request: AskRequest, stop: threading.Event | None = None) -> Answer:
        answer: Answer | None = None
        for item in self.ask_stream(request, stop):
            if isinstance(item, Answer):
                answer = item
        assert answer is not None
        return answer

    def ask_stream(
        self, request: AskRequest, stop: threading.Event | None = None
    ) -> Iterator[str | Answer]:
        """Yields answer text pieces as they are generated, then the whole Answer."""
        started = time.perf_counter()
        question = self._check_question(request.question)
        top_k = request.top_k or self.settings.top_k
        if not 1 <= top_k <= 50:
            raise InvalidInput(f"top_k {top_k} is out of range.", "Use 1 to 50.")
        self._check_collection(request.collection)
        thread = self.conversations.thread(request.conversation_id, request.history,
                                           request.keep, request.owner)
        self.refresh_index()
        key = self._cache_key(question, top_k, request, thread.history)
        cached = self.cache.get(key)
        if cached is not None:
            total = (time.perf_counter() - started) * 1000
            yield cached.text
            yield self._given(_replace_answer(cached, cached=True,
                                              timings=Timings(total_ms=total)), request, thread)
            return
        answer = yield from self._answer(question, top_k, request, started, stop,
                                         thread.history)
        if stop is None or not stop.is_set():
            self.cache.put(key, answer)
            answer = self._given(answer, request, thread)
        yield answer

    def _given(self, answer: Answer, request: AskRequest, thread: Thread) -> Answer:
        """The answer with its own id and conversation, kept for that conversation and for
        feedback."""
        answer = replace(answer, id=request.answer_id or new_id("ans"),
                         conversation_id=thread.conversation_id,
                         note=thread.note)
        kept = self.conversations.keep(AnswerRecord(
            answer.id, answer.question, answer.text, thread.conversation_id, thread.history,
            tuple(dict.fromkeys(c.filename for c in answer.citations)), answer.mode,
            request.owner))
        if not kept and thread.conversation_id is not None:
            return replace(answer, conversation_id=None, note="The conversation could not be "
                           "kept (its store is unreachable); the next question starts anew.")
        return answer

    def _answer(
        self, question: str, top_k: int, request: AskRequest, started: float,
        stop: threading.Event | None, history: tuple[Turn, ...] = (),
    ) -> collections.abc.Generator[str, None, Answer]:
        if self.pipeline is None:
            raise NotReady("The service is still loading.", "Wait for /ready, then retry.")
        query = Query(question, top_k, request.collection, request.document_ids)
        limit = self._max_new_tokens(request)
        ctx = yield from self.pipeline.run(AskContext(query, stop, history, limit))
        return self._finish(ctx, started)

    def _pipeline(self, retriever: Retriever) -> AskPipeline:
        """The ask path, stage by stage."""
        s, generator = self.settings, self.generator
        selector = EvidenceSelector(self.store, self.embedder, s.evidence_sentences, s.rrf_k)
        return AskPipeline([
            *([FollowupStage()] if s.followup_rewrite == "terms" else []),
            RetrieveStage(retriever),
            EvidenceStage(selector, s.min_relevance, s.min_evidence),
            PromptStage(generator, s.answer_context, s.max_new_tokens),
            GenerateStage(generator, s.max_new_tokens, s.stop_at_paragraph),
            CheckStage(s.min_support_overlap, s.unsupported_answer, s.evidence_sentences,
                       s.min_quote_score),
        ])

    def _finish(self, ctx: AskContext, started: float) -> Answer:
        now = time.perf_counter()
        ms = 1000.0
        stages = {name: round(value, 3) for name, value in ctx.timings.items()}
        first = ctx.first_token or now
        timings = Timings(
            retrieve_ms=stages.get("retrieve", 0.0),
            evidence_ms=stages.get("evidence", 0.0),
            prompt_ms=stages.get("prompt", 0.0),
            first_token_ms=(first - started) * ms,
            generate_ms=stages.get("generate", 0.0),
            check_ms=stages.get("check", 0.0),
            total_ms=(now - started) * ms,
            stages=stages,
        )
        prompt = ctx.prompt
        sources = prompt.sources if prompt else ()
        return Answer(
            question=ctx.question,
            text=ctx.text,
            citations=tuple(_citation(n, s) for n, s in enumerate(sources, start=1)),
            mode=ctx.mode,
            groundedness=ctx.groundedness,
            evidence=ctx.quotes,
            sentences=ctx.sentences,
            generated_text=ctx.generated,
            usage=Usage(prompt.prompt_tokens if prompt else 0, ctx.completion_tokens),
            timings=timings,
            used_chunk_ids=tuple(s.chunk.id for s in sources),
            dropped_chunk_ids=tuple(s.chunk.id for s in prompt.dropped) if prompt else (),
            model=self.generator.name,
            index_version=self._index().version,
            history_turns=len(prompt.turns) if prompt else 0,
            search=ctx.search,
        )

    def _max_new_tokens(self, request: AskRequest) -> int:
        """The request's cap on the answer, never above the setting (the budget's reserve)."""
        limit = self.settings.max_new_tokens
        if request.max_new_tokens is not None:
            if request.max_new_tokens < 1:
                raise InvalidInput(f"max_tokens {request.max_new_tokens} is below 1.",
                                   "Ask for at least one token, or leave it out.")
            limit = min(limit, request.max_new_tokens)
        return limit

    def _check_question(self, question: str) -> str:
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

    def _check_collection(self, collection: str | None) -> None:
        if collection and collection not in self.store.collections():
            raise NotFound(
                f"Collection {collection!r} does not exist.",
                "Leave it out to search everything, or upload documents into it first.",
            )

    def _cache_key(self, question: str, top_k: int, request: AskRequest,
                   history: Sequence[Turn]) -> str:
        s = self.settings
        return cache_key(question, {
            "history": [[t.question, t.answer] for t in history],
            "followup_rewrite": s.followup_rewrite,
            "top_k": top_k, "collection": request.collection,
            "documents": sorted(request.document_ids), "index": self._index().version,
            "index_id": self._index().index_id,
            "model": self.generator.name, "embedder": s.embedding_model,
            "max_new_tokens": self._max_new_tokens(request), "temperature": s.temperature,
            "context": s.context_window, "template": PROMPT_TEMPLATE_VERSION,
            "hybrid": s.hybrid, "min_relevance": s.min_relevance,
            "answer_context": s.answer_context, "evidence_sentences": s.evidence_sentences,
            "min_evidence": s.min_evidence, "unsupported_answer": s.unsupported_answer,
            "min_support_overlap": s.min_support_overlap, "min_quote_score": s.min_quote_score,
            "stop_at_paragraph": s.stop_at_paragraph,
        })


def _renew(lock: Any, lease: float, done: threading.Event) -> None:
    """Renew the writer lease every third of it until `done` (the holder's thread owns it)."""
    while not done.wait(lease / 3):
        try:
            lock.reacquire()
        except Exception as exc:  # lost (expired while this process stalled) or Redis away
            log.error("the index writer lease could not be renewed: %s", exc)
            return


def _citation(number: int, source: ScoredChunk) -> Citation:
    c = source.chunk
    return Citation(number=number, document_id=c.document_id, filename=source.filename,
                    chunk_id=c.id, text=c.text, start=c.start, end=c.end, page=c.page,
                    score=round(source.score, 6))


def _replace_answer(answer: Answer, **changes: Any) -> Answer:
    return replace(answer, **changes)


def _note_pages(elements: Iterable[Element], pages: dict[str, int]) -> Iterator[Element]:
    """Pass elements through, noting the last page (a chunk knows only the page it starts on)."""
    for element in elements:
        if element.page is not None:
            pages["high"] = max(pages["high"], element.page)
        yield element


def _with_sentences(
    elements: Iterable[Element], sentences: list[SentenceDraft]
) -> Iterator[Element]:
    """Pass elements through, collecting their sentences (offsets into the parsed text)."""
    for offset, element in element_offsets(elements):
        sentences.extend(
            SentenceDraft(offset + start, offset + end, element.text[start:end], element.page,
                          element.title_path)
            for start, end in sentence_spans(element.text)
        )
        yield element


def _timed(items: Iterable[T], clock: dict[str, float], stage: str) -> Iterator[T]:
    """Yield from `items`, adding the seconds spent producing them to `clock[stage]`."""
    iterator = iter(items)
    while True:
        started = time.perf_counter()
        try:
            item = next(iterator)
        except StopIteration:
            return
        finally:
            clock[stage] = clock.get(stage, 0.0) + time.perf_counter() - started
        yield item
