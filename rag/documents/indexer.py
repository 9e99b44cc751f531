"""The one owner of document state: ingest, process, delete and reindex documents.

A document is `queued` when its bytes and row are stored, `processing` while its pipeline
runs, then `indexed`, `failed` or `cancelled`. Every change of that state goes through this
module; the processing itself (parse -> chunk -> embed -> store) is `documents.processing`.

A file under the name of a current document of its collection, with other bytes, is a new
version (rag.stores.documents): the old one stays searchable while the new one is processed,
then one store transaction and one index save swap them (the old becomes `replaced`, its
chunks, vectors, bytes and cached answers go). Deleting any version deletes them all.

Once that transaction has committed, the store is the truth: nothing that fails or is
interrupted afterwards (the index save, a full disk, Ctrl-C) clears or fails the document; the
index is rebuilt from the store then, or at the next start, which compares the saved index's
checksum of chunk ids with the store's.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from rag.access import DEFAULT_TENANT, EVERYONE, REFUSED, Reader, document_id
from rag.documents.chunking import Chunker, check_window
from rag.documents.detection import SUPPORTED, inspect_file
from rag.documents.processing import DocumentProcessor, Progress, no_progress
from rag.embedding import Embedder
from rag.errors import LOADING_HINT, InvalidInput, NotFound, NotReady, RagError
from rag.index.live import LiveIndex
from rag.settings import Settings
from rag.stores.chunks import ChunkStore, Promotion
from rag.stores.response_cache import ResponseCache
from rag.stores.uploads import Uploads, sha256_file
from rag.types import Document

log = logging.getLogger(__name__)

ALL_DOCUMENTS = 1_000_000


class DocumentIndexer:
    """Documents in, searchable chunks out; `load()` once the embedder has loaded."""

    def __init__(
        self, settings: Settings, store: ChunkStore, uploads: Uploads, embedder: Embedder,
        index: LiveIndex, cache: ResponseCache,
    ) -> None:
        self.settings = settings
        self.store = store
        self.uploads = uploads
        self.embedder = embedder
        self.index = index
        self.cache = cache
        self._processor: DocumentProcessor | None = None

    def load(self) -> None:
        """Check the chunk window against the embedder and build the chunker."""
        s = self.settings
        check_window(s.chunk_size, s.chunk_overlap, self.embedder.max_tokens)
        chunker = Chunker(self.embedder.tokenizer, s.chunk_size, s.chunk_overlap)
        self._processor = DocumentProcessor(s, self.store, self.embedder, chunker)

    @property
    def chunker(self) -> Chunker:
        """How documents are cut into windows (after `load()`)."""
        return self._loaded().chunker

    def _loaded(self) -> DocumentProcessor:
        if self._processor is None:
            raise NotReady("The embedder is still loading.", LOADING_HINT)
        return self._processor

    # Reading

    def get(self, doc_id: str) -> Document | None:
        return self.store.get_document(doc_id)

    def readable(self, doc_id: str, reader: Reader) -> Document:
        """The document, when `reader` may read it; else NotFound, as for an absent one (a
        refusal never confirms that it exists, and is counted in `REFUSED`)."""
        doc = self.store.readable_document(doc_id, reader, "document")
        if doc is None:
            raise NotFound(f"Document {doc_id} does not exist.",
                           "List documents with GET /v1/documents.")
        return doc

    def page(
        self, collection: str | None = None, offset: int = 0, limit: int = 50,
        reader: Reader = EVERYONE,
    ) -> tuple[list[Document], int]:
        """One page of the documents `reader` may read (oldest first) and their total."""
        return self.store.list_documents(collection, offset, limit, reader)

    def searchable_count(self) -> int:
        return self.store.searchable_count()

    def refresh_index(self) -> None:
        """Make this process search the newest index version now (another process may have
        just indexed a document); a no-op before the index has loaded."""
        if self.index.loaded:
            self.index.refresh(force=True)

    # Uploads accepted over the API (the job queue processes them later)

    def keep_upload(self, path: Path, doc_id: str) -> bool:
        """Keep uploaded bytes durably under their hash; False when already kept."""
        return self.uploads.adopt(path, doc_id)

    def register(self, doc: Document) -> Document:
        """Record an accepted upload as a `queued` document: the next version when its name
        holds a current document in its collection."""
        return self.store.put_version(replace(doc, state="queued"))

    def versions(self, doc_id: str, reader: Reader = EVERYONE) -> list[Document]:
        """Every version of the document `reader` may read (oldest first); [] when it is
        unknown."""
        return [v for v in self.store.versions(doc_id) if reader.may_read(v.tenant, v.access)]

    def deletable(self, doc_id: str, reader: Reader) -> list[Document]:
        """Every version of the document, when `reader` may read them all (what a key may
        delete); [] when it is unknown or any version is hidden from `reader` (counted in
        `REFUSED`, answered as for an absent document)."""
        versions = self.store.versions(doc_id)
        if all(reader.may_read(v.tenant, v.access) for v in versions):
            return versions
        REFUSED.add("document")
        return []

    def drop_upload(self, doc_id: str) -> None:
        """Forget the bytes of an upload whose request failed."""
        self.uploads.remove(doc_id)

    def drop_record(self, doc_id: str) -> None:
        """Forget the document row of an upload whose request failed (never indexed)."""
        self.store.delete_document(doc_id)

    def mark_cancelled(self, doc_id: str) -> None:
        self.store.set_state(doc_id, "cancelled", "Its ingestion job was cancelled.")

    def mark_queued(self, doc_id: str, error: str | None = None) -> None:
        """Back in the queue (an interrupted or retried job), saying why."""
        self.store.set_state(doc_id, "queued", error)

    # Processing

    def ingest_file(
        self, path: Path, filename: str | None = None, collection: str = "default",
        metadata: Mapping[str, Any] | None = None, progress: Progress = no_progress,
    ) -> Document:
        """Parse, chunk, embed and index one file; the same bytes twice are one document, and
        new bytes under the name of a current document are its next version.

        Interrupted (Ctrl-C) before it was swapped in, the new version's chunks are dropped
        and it is left `cancelled`: the version it would replace stays current. Interrupted
        after, it stays indexed (the index is rebuilt from the store at the next start).
        """
        name = filename or path.name
        kind = inspect_file(path, name, self.settings)  # as intake checks an API upload
        doc_id = document_id(sha256_file(path), DEFAULT_TENANT)  # the CLI writes `default`
        existing = self.store.get_document(doc_id)
        if existing is not None and existing.state == "indexed":
            return existing
        self.uploads.keep(path, doc_id)
        doc = Document(id=doc_id, filename=name, content_type=SUPPORTED[kind],
                       size=path.stat().st_size, collection=collection,
                       metadata=dict(metadata or {}), state="processing")
        self.store.put_version(doc)
        try:
            return self.process(doc_id, progress)
        except (KeyboardInterrupt, SystemExit):
            now = self.store.get_document(doc_id)
            if now is not None and now.state != "indexed":  # not swapped in (or retired)
                self.store.clear_chunks(doc_id)
            if now is not None and now.state == "processing":
                self.store.set_state(doc_id, "cancelled", "Its ingestion was interrupted.")
            raise

    def process(
        self, doc_id: str, progress: Progress = no_progress,
        timings: dict[str, float] | None = None, again: bool = False,
    ) -> Document:
        """Run the pipeline for a stored document; on failure it is marked failed and raised.

        A document already indexed (a retried job whose attempt died after the swap) is
        returned as it is, once the index is checked against the store; `again` processes it
        anew (`rag reindex --reembed`): it is unsearchable while that runs.

        `timings`, when given, is filled while it runs with seconds per stage (parse, chunk,
        embed, index). A progress callback may raise to stop the job; its last call comes just
        before the version is promoted (inside the index writer in embedded mode), so raising
        there still leaves nothing half-indexed and the replaced version current.
        """
        processor = self._loaded()  # before any state changes: not loaded is not the file's fault
        doc = self.store.get_document(doc_id)
        if doc is None:
            raise InvalidInput(f"Document {doc_id} is unknown.", "Upload it first.")
        if doc.state == "replaced":  # a newer version was indexed first: nothing left to do
            if self.store.chunk_ids(doc_id):  # but what a dead attempt stored after that
                self.store.clear_chunks(doc_id)
            return doc
        if doc.state == "indexed" and not again:  # swapped in by an attempt that then died
            self.index.reconcile()  # which may have been before the index was saved
            return doc
        self.store.set_state(doc_id, "processing")
        self._clear_previous(doc_id)  # a retried job starts clean
        clock = timings if timings is not None else {}
        committed: list[Promotion] = []
        try:
            with self.uploads.local(doc.id) as path:
                pages = processor.run(doc, path, progress, clock)
            started = time.perf_counter()
            self._make_searchable(doc_id, pages, progress, committed)
            clock["index"] = time.perf_counter() - started
        except BaseException as exc:
            if committed:  # swapped in: the store is the truth, the index follows it
                self._index_failed(doc_id, committed[0], exc)
                if not isinstance(exc, Exception):
                    raise
            else:
                if isinstance(exc, Exception):
                    self._fail(doc_id, exc)
                raise
        result = self.store.get_document(doc_id)
        if result is None:
            raise NotFound(f"Document {doc_id} was deleted while it was processed.",
                           "Upload it again to index it.")
        return result

    def _make_searchable(
        self, doc_id: str, pages: int | None, progress: Progress, committed: list[Promotion]
    ) -> None:
        """Swap the document in for the version it replaces: one store transaction (with its
        change-log entries), then in embedded mode one index swap and save under the writer
        lease. The promotion is appended to `committed` as soon as it has committed.

        `progress` is called first: the last point at which the job may still stop."""
        if self.settings.database_url:  # searchable once committed: the log does the rest
            progress("index", 0, 1)
            done = self.store.promote(doc_id, pages)
            committed.append(done)
            self.index.refresh(force=True)
        else:
            with self.index.writing():
                progress("index", 0, 1)
                done = self.store.promote(doc_id, pages)
                committed.append(done)
                if not done.superseded:  # else it never was in the index
                    self.index.swap(done.removed_chunks, doc_id)  # saves once
        self._forget(list(done.replaced))

    def _fail(self, doc_id: str, exc: Exception) -> None:
        """Drop a version's chunks and mark it failed (it was never swapped in)."""
        self.store.clear_chunks(doc_id)
        reason = str(exc) if isinstance(exc, RagError) else f"{type(exc).__name__}: {exc}"
        self.store.set_state(doc_id, "failed", reason)

    def _index_failed(self, doc_id: str, done: Promotion, exc: BaseException) -> None:
        """After the swap committed, updating the index failed or was interrupted: keep the
        document, drop what it replaced, and rebuild the index from the store (an interrupt
        leaves that to the next start, which finds the saved index's checksum stale; with
        PostgreSQL the change log already carries the swap)."""
        log.warning("document %s is indexed but the index was not updated (%s: %s); %s",
                    doc_id[:12], type(exc).__name__, exc,
                    "rebuilding it" if isinstance(exc, Exception) else "it is rebuilt at start")
        if not isinstance(exc, Exception):
            return
        self._forget(list(done.replaced))
        if self.settings.database_url:  # the change log carries the swap to every index
            return
        try:
            self.index.rebuild()
        except Exception as again:  # e.g. still a full disk: the next start rebuilds it
            log.warning("rebuilding the index failed too (%s); it is rebuilt at the next "
                        "start", again)

    def _forget(self, doc_ids: list[str]) -> None:
        """Drop the bytes and cached answers of versions that were replaced or deleted."""
        for doc_id in doc_ids:
            self.uploads.remove(doc_id)
        if doc_ids:
            self.cache.forget_documents(doc_ids)

    def _clear_previous(self, doc_id: str) -> None:
        """Drop chunks (and any vectors) an interrupted earlier attempt left behind."""
        ids = self.store.chunk_ids(doc_id)
        if ids and not self.settings.database_url:
            with self.index.writing():
                self.index.remove(ids, always_save=False)
        self.store.clear_chunks(doc_id)

    def delete(self, doc_id: str) -> bool:
        """Remove a document, every version of it, their vectors, chunks, uploads and cached
        answers; idempotent."""
        if self.store.get_document(doc_id) is None:
            return False
        if self.settings.database_url:
            doc_ids, _ = self.store.delete_lineage(doc_id)  # removals go out through the log
            self.index.refresh(force=True)
        else:
            with self.index.writing():
                doc_ids, chunk_ids = self.store.delete_lineage(doc_id)
                self.index.remove(chunk_ids)
        self._forget(doc_ids)
        return True

    def reindex(self, reembed: bool = False) -> tuple[int, list[str]]:
        """Rebuild the index from the stored vectors, or re-process every upload (`reembed`:
        each document is unsearchable while it is processed again; one that fails is left
        `failed`, its error kept, and is listed).

        Returns (documents indexed, ids that failed).
        """
        docs, _ = self.store.list_documents(limit=ALL_DOCUMENTS)
        if not reembed:
            self.index.rebuild()
            return sum(d.state == "indexed" for d in docs), []
        if not self.settings.database_url:
            self.index.clear()
        failed = []
        for doc in docs:
            try:
                self.process(doc.id, again=True)
            except RagError as exc:
                log.warning("re-indexing %s (%s) failed: %s", doc.filename, doc.id, exc)
                failed.append(doc.id)
        self.cache.clear()
        return len(docs) - len(failed), failed
