"""One document's file to stored chunks and sentences: parse -> chunk -> embed -> store.

Streamed in bounded memory: elements are cut into token windows and their sentences collected
as they are parsed; every `EMBED_BATCH` windows are embedded and written, with the sentences
seen so far. The index is not touched here (the indexer makes the chunks searchable).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

import numpy as np
import numpy.typing as npt

from rag.documents import parsing
from rag.documents.chunking import Chunker, element_offsets
from rag.documents.detection import KINDS
from rag.documents.sentences import headed_spans, with_header
from rag.embedding import Embedder
from rag.errors import EmptyDocument
from rag.settings import Settings
from rag.stores.chunks import ChunkStore
from rag.types import ChunkDraft, Document, Element, SentenceDraft

EMBED_BATCH = 64

Progress = Callable[[str, int, int | None], None]
T = TypeVar("T")
K = TypeVar("K")


def no_progress(stage: str, done: int, total: int | None) -> None:
    """Default progress callback: ignore."""


class DocumentProcessor:
    """Writes a document's chunks (with vectors) and sentences (with vectors) to the store."""

    def __init__(
        self, settings: Settings, store: ChunkStore, embedder: Embedder, chunker: Chunker
    ) -> None:
        self.settings = settings
        self.store = store
        self.embedder = embedder
        self.chunker = chunker

    def run(
        self, doc: Document, path: Path, progress: Progress, clock: dict[str, float]
    ) -> int | None:
        """Process `path` as `doc`; returns its last page. `clock` gets seconds per stage."""
        pages = {"high": 0}
        batch: list[ChunkDraft] = []
        sentences: list[SentenceDraft] = []
        done = 0
        progress("parse", 0, None)
        kind = KINDS.get(doc.content_type)  # detected at intake (None: an older document)
        parsed = note_pages(parsing.parse(path, doc.filename, self.settings, kind), pages)
        elements = with_sentences(timed(parsed, clock, "parse"), sentences)
        for draft in timed(self.chunker.chunk(elements), clock, "chunk"):
            batch.append(draft)
            if len(batch) >= EMBED_BATCH:
                progress("chunk", done + len(batch), None)
                done += self._embed_chunks(doc, batch, clock)
                self._embed_sentences(doc, sentences, clock)
                progress("embed", done, None)
                batch = []
        clock["chunk"] = clock.get("chunk", 0.0) - clock.get("parse", 0.0)  # parse ran inside
        if batch:
            done += self._embed_chunks(doc, batch, clock)
        self._embed_sentences(doc, sentences, clock)
        if done == 0:
            raise EmptyDocument(
                f"{doc.filename!r} holds no text to index.", "Upload a file with text in it."
            )
        progress("embed", done, done)
        return pages["high"] or None

    def _embed_chunks(
        self, doc: Document, batch: Sequence[ChunkDraft], clock: dict[str, float]
    ) -> int:
        """Embed and store a batch of chunks; a chunk with the text of a chunk of the version
        `doc` replaces keeps that chunk's vector (only what changed is embedded)."""
        started = time.perf_counter()
        texts = [d.text for d in batch]
        known = self.store.chunk_vectors_by_text(doc.replaces, texts) if doc.replaces else {}
        self.store.add_chunks(doc.id, batch, self._vectors(texts, texts, known))
        clock["embed"] = clock.get("embed", 0.0) + time.perf_counter() - started
        return len(batch)

    def _embed_sentences(
        self, doc: Document, sentences: list[SentenceDraft], clock: dict[str, float]
    ) -> None:
        """Embed and store the sentences collected so far, then forget them; as for chunks,
        a sentence read the same way in the replaced version keeps its vector."""
        if not sentences:
            return
        started = time.perf_counter()
        for start in range(0, len(sentences), EMBED_BATCH * 4):
            part = sentences[start : start + EMBED_BATCH * 4]
            keys = [(s.text, s.header) for s in part]
            known = (self.store.sentence_vectors_by_text(doc.replaces, [s.text for s in part])
                     if doc.replaces else {})
            read = [with_header(s) for s in part]  # what is embedded
            self.store.add_sentences(doc.id, part, self._vectors(keys, read, known))
        sentences.clear()
        clock["embed"] = clock.get("embed", 0.0) + time.perf_counter() - started

    def _vectors(
        self, keys: Sequence[K], texts: Sequence[str], known: Mapping[K, npt.NDArray[np.float32]]
    ) -> npt.NDArray[np.float32]:
        """One vector per text: the known one for its key, else embedded (in one call)."""
        missing = [t for k, t in zip(keys, texts, strict=True) if k not in known]
        fresh = iter(self.embedder.embed(missing)) if missing else iter(())
        return np.stack([known[k] if k in known else next(fresh) for k in keys])


def note_pages(elements: Iterable[Element], pages: dict[str, int]) -> Iterator[Element]:
    """Pass elements through, noting the last page (a chunk knows only the page it starts on)."""
    for element in elements:
        if element.page is not None:
            pages["high"] = max(pages["high"], element.page)
        yield element


def with_sentences(
    elements: Iterable[Element], sentences: list[SentenceDraft]
) -> Iterator[Element]:
    """Pass elements through, collecting their sentences (offsets into the parsed text); a
    table's rows carry its header line."""
    for offset, element in element_offsets(elements):
        sentences.extend(
            SentenceDraft(offset + start, offset + end, element.text[start:end], element.page,
                          element.title_path, header)
            for start, end, header in headed_spans(element.text, element.category == "Table")
        )
        yield element


def timed(items: Iterable[T], clock: dict[str, float], stage: str) -> Iterator[T]:
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
