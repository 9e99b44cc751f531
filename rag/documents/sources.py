"""The source of a quote, for people to check it: the parsed text around it, the PDF page it is
on (rendered, with the quote's place on it) and the original bytes.

The parsed text comes back from the stored chunks, whose offsets point into it exactly
(`text == parsed_text[start:end]`; consecutive windows overlap, and what lies between two that do
not is the separator of two elements). Only the chunks around the quote are read: they are found
by bisection over the document's chunk ids, which follow the text.

Rendered pages and quotes' places on them are kept in small LRU caches: a document's id is the
hash of its bytes, so what was computed for it never goes stale. Where only the page image is
unavailable (the upload is missing, or pdfium cannot read it) the passage comes without it.

Every read names its `Reader`: a document it may not read is NotFound exactly as an unknown one
(its existence is not confirmed), and counted in `REFUSED` as a `view`.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

from rag.access import EVERYONE, Reader
from rag.documents.chunking import SEPARATOR
from rag.documents.pages import PageQuote, quote_on_page, render_page
from rag.errors import InvalidInput, NotFound
from rag.stores.chunks import ChunkStore
from rag.stores.uploads import BLOCK, Uploads
from rag.types import Chunk, Document

CONTEXT_CHARS = 2000  # parsed text shown on each side of a quote
MAX_QUOTE_CHARS = 20_000  # a longer span is marked as far as this
PDF = "application/pdf"
PAGE_IMAGES_CACHED = 32  # rendered pages kept (PNG, ~0.1-1 MB each)
PAGE_QUOTES_CACHED = 512  # quotes' places on their pages kept

log = logging.getLogger(__name__)
V = TypeVar("V")


class Lru(Generic[V]):
    """A small thread-safe least-recently-used cache of computed values."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[Hashable, V] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable, compute: Callable[[], V]) -> V:
        """The value kept for `key`, else `compute()` kept (two threads may both compute)."""
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        value = compute()
        with self._lock:
            self._items[key] = value
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return value


@dataclass(frozen=True)
class Passage:
    """A quote in its place: the parsed text before it, the quote, the text after it."""

    document: Document
    start: int
    end: int
    before: str
    quote: str
    after: str
    more_before: bool  # the document goes on before `before`
    more_after: bool
    page: int | None  # the page the quote is on, where the format has pages
    on_page: PageQuote | None  # for a PDF: where the quote stands on the rendered page


class Sources:
    """Reads documents back for the source view: passages, page images, original files."""

    def __init__(self, store: ChunkStore, uploads: Uploads) -> None:
        self.store = store
        self.uploads = uploads
        self._images: Lru[bytes] = Lru(PAGE_IMAGES_CACHED)
        self._places: Lru[PageQuote] = Lru(PAGE_QUOTES_CACHED)

    def document(self, doc_id: str, reader: Reader = EVERYONE) -> Document:
        """The document, or NotFound (never uploaded, deleted since the link was made, or not
        readable by `reader`: the same NotFound, counted as a refused `view`)."""
        doc = self.store.readable_document(doc_id, reader, "view")
        if doc is None:
            raise NotFound(f"Document {doc_id} does not exist (it may have been deleted).",
                           "Ask again: answers cite the documents there are now.")
        return doc

    def passage(self, doc_id: str, start: int, end: int, page: int | None = None,
                reader: Reader = EVERYONE) -> Passage:
        """The text [start, end) of a document with CONTEXT_CHARS around it and, for a PDF,
        where it stands on its page (`page`, or the page of the chunk that holds it): None where
        the page image is unavailable. InvalidInput for `end <= start`; NotFound for no such
        document (or none `reader` may read), text or page."""
        if end <= start:
            raise InvalidInput(f"The quote's end ({end}) is not after its start ({start}).",
                               "Give `end` greater than `start`: the text is [start, end).")
        doc = self.document(doc_id, reader)
        end = min(end, start + MAX_QUOTE_CHARS)
        chunks, more_after = self._chunks_around(doc_id, start - CONTEXT_CHARS,
                                                 end + CONTEXT_CHARS)
        if not chunks or start < chunks[0].start or end > chunks[-1].end:
            raise NotFound(f"Document {doc_id} ({doc.filename}) has no text at {start}-{end}.",
                           "Open the view_url of a current answer; offsets are into the "
                           "document's parsed text.")
        low = max(chunks[0].start, start - CONTEXT_CHARS)
        high = min(chunks[-1].end, end + CONTEXT_CHARS)
        text = _joined(chunks, low, high)
        quote = text[start - low : end - low]
        number = page or next((c.page for c in chunks if c.start <= start < c.end), None)
        on_page = None
        if doc.content_type == PDF and number is not None:
            on_page = self._place(doc, number, quote)
        return Passage(document=doc, start=start, end=end, before=text[: start - low],
                       quote=quote, after=text[end - low :], more_before=low > 0,
                       more_after=more_after or high < chunks[-1].end, page=number,
                       on_page=on_page)

    def page_image(self, doc_id: str, number: int, reader: Reader = EVERYONE) -> bytes:
        """Page `number` of a PDF document as PNG; NotFound for a document without pages (or
        that `reader` may not read), no such page, or one whose upload is missing or
        unreadable."""
        doc = self.document(doc_id, reader)
        if doc.content_type != PDF:
            raise NotFound(f"{doc.filename} is not a PDF: it has no page images.",
                           "Open its view_url to see the quote in its text.")

        def render() -> bytes:
            with self.uploads.local(doc_id) as path:
                return render_page(path, number)

        try:
            return self._images.get((doc_id, number), render)
        except InvalidInput as exc:  # pdfium cannot read the stored file
            raise NotFound(f"The pages of {doc.filename} cannot be shown: {exc.message}",
                           "Open its view_url to see the quote in its text.") from exc

    def _place(self, doc: Document, number: int, quote: str) -> PageQuote | None:
        """Where `quote` stands on page `number` of a PDF; None (logged) when the upload is
        missing or pdfium cannot read it. NotFound for a page the PDF does not have."""
        if not self.uploads.has(doc.id):
            log.warning("source view of %s (%s) without its page: the upload is missing",
                        doc.id, doc.filename)
            return None

        def find() -> PageQuote:
            with self.uploads.local(doc.id) as path:
                return quote_on_page(path, number, quote)

        try:
            return self._places.get((doc.id, number, quote), find)
        except InvalidInput as exc:
            log.warning("source view of %s (%s) without its page: %s", doc.id, doc.filename,
                        exc.message)
            return None

    def original(self, doc_id: str, reader: Reader = EVERYONE
                 ) -> tuple[Document, Iterator[bytes]]:
        """The document and its uploaded bytes, read in blocks as they are sent; NotFound for
        no such document, one `reader` may not read, or a missing upload."""
        doc = self.document(doc_id, reader)
        if not self.uploads.has(doc_id):
            raise NotFound(f"The uploaded file of {doc.filename} is missing.",
                           "Upload the file again.")
        return doc, self._blocks(doc_id)

    def _blocks(self, doc_id: str) -> Iterator[bytes]:
        with self.uploads.local(doc_id) as path, open(path, "rb") as f:
            while block := f.read(BLOCK):
                yield block

    def _chunks_around(self, doc_id: str, low: int, high: int) -> tuple[list[Chunk], bool]:
        """The document's chunks that overlap [low, high), in text order, and whether more
        follow them."""
        ids = self.store.chunk_ids(doc_id)
        read: dict[int, Chunk] = {}

        def chunk(i: int) -> Chunk:
            if ids[i] not in read:
                read.update(self.store.get_chunks(ids[i : i + 8]))
            return read[ids[i]]

        first, last = 0, len(ids)  # bisect: the first chunk ending after `low`
        while first < last:
            middle = (first + last) // 2
            if chunk(middle).end <= low:
                first = middle + 1
            else:
                last = middle
        found: list[Chunk] = []
        for i in range(first, len(ids)):
            if chunk(i).start >= high:
                return found, True
            found.append(chunk(i))
        return found, False


def _joined(chunks: list[Chunk], low: int, high: int) -> str:
    """The parsed text [low, high) from overlapping chunks (gaps are element separators)."""
    parts: list[str] = []
    at = low
    for c in chunks:
        if c.end <= at:
            continue
        if c.start > at:  # between two windows: the separator of two elements
            gap = c.start - at
            parts.append(SEPARATOR if gap == len(SEPARATOR) else " " * gap)
            at = c.start
        if c.end > at:
            parts.append(c.text[at - c.start :])
            at = c.end
    return "".join(parts)[: high - low]
