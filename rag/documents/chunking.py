"""Sliding token windows over a document's elements, with exact character offsets.

The parsed text of a document is its elements' texts joined by `SEPARATOR`; every chunk
carries `start`/`end` into that text and `text == parsed_text[start:end]`. Windows are
counted in the embedding model's tokens, never cross documents, and start at an element
boundary when one lies inside the overlap.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from rag.errors import ConfigError
from rag.types import ChunkDraft, Element

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

SEPARATOR = "\n\n"


@dataclass(frozen=True)
class _Token:
    start: int  # character offsets into the parsed text
    end: int
    element_start: bool  # first token of an element
    element: int  # index into the element list kept alongside


def check_window(size: int, overlap: int, model_max: int) -> None:
    """0 <= overlap < size <= model_max, or a ConfigError that says which to change."""
    if not 0 <= overlap < size:
        raise ConfigError(
            f"Chunk overlap {overlap} must be >= 0 and smaller than chunk size {size}.",
            "Set RAG_CHUNK_OVERLAP below RAG_CHUNK_SIZE.",
        )
    if size > model_max:
        raise ConfigError(
            f"Chunk size {size} exceeds the embedding model's limit of {model_max} tokens.",
            f"Set RAG_CHUNK_SIZE to at most {model_max}.",
        )


def parsed_text(elements: Iterable[Element]) -> str:
    """The text chunk offsets point into (elements without text take no place in it)."""
    return SEPARATOR.join(e.text for e in elements if e.text)


def element_offsets(elements: Iterable[Element]) -> Iterator[tuple[int, Element]]:
    """Each element with text, with the offset of its text in the parsed text."""
    offset = 0
    for element in elements:
        if not element.text:
            continue
        if offset:
            offset += len(SEPARATOR)
        yield offset, element
        offset += len(element.text)


class Chunker:
    """Cuts a stream of elements into overlapping token windows in bounded memory."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, size: int, overlap: int) -> None:
        self.tokenizer = tokenizer
        self.size = size
        self.overlap = overlap

    def chunk(self, elements: Iterable[Element]) -> Iterator[ChunkDraft]:
        state = _Window(self)
        for offset, element in element_offsets(elements):
            if offset:
                state.add_text(SEPARATOR)
            state.add_element(element, offset)
            yield from state.emit(final=False)
        yield from state.emit(final=True)


class _Window:
    """Rolling buffer of tokens and the parsed text they cover."""

    def __init__(self, chunker: Chunker) -> None:
        self.c = chunker
        self.tokens: list[_Token] = []
        self.elements: dict[int, Element] = {}
        self.text_parts: list[str] = []
        self.text_base = 0  # offset of text_parts[0][0] in the parsed text
        self.text = ""
        self.next_element = 0
        self.ordinal = 0

    def add_text(self, text: str) -> None:
        self.text_parts.append(text)

    def add_element(self, element: Element, offset: int) -> None:
        self.text_parts.append(element.text)
        index = self.next_element
        self.next_element += 1
        encoded = self.c.tokenizer(
            element.text, add_special_tokens=False, return_offsets_mapping=True, verbose=False
        )
        spans = [(a, b) for a, b in encoded["offset_mapping"] if b > a]
        if not spans:
            return
        self.elements[index] = element
        for i, (a, b) in enumerate(spans):
            self.tokens.append(_Token(offset + a, offset + b, i == 0, index))

    def emit(self, final: bool) -> Iterator[ChunkDraft]:
        size, overlap = self.c.size, self.c.overlap
        # Without `final` a window is cut only once a token beyond it exists.
        while self.tokens and (final or len(self.tokens) > size):
            end = min(size, len(self.tokens))
            if end < len(self.tokens):
                end = self._end_at_element(end)
            yield self._draft(end)
            if end >= len(self.tokens):
                self.tokens.clear()
                break
            self._advance(max(end - overlap, 1), end)

    def _end_at_element(self, end: int) -> int:
        """Prefer ending just before an element start in the second half of the new tokens."""
        floor = max(1, self.c.overlap + (self.c.size - self.c.overlap) // 2)
        for i in range(end, floor - 1, -1):
            if self.tokens[i].element_start:
                return i
        return end

    def _advance(self, start: int, end: int) -> None:
        """Drop tokens before the next window, snapping to an element start in the overlap
        (or at the cut itself: a window that ended at an element needs no overlap)."""
        for i in range(start, end + 1):
            if self.tokens[i].element_start:
                start = i
                break
        del self.tokens[:start]
        live = {t.element for t in self.tokens}
        self.elements = {k: v for k, v in self.elements.items() if k in live}

    def _draft(self, end: int) -> ChunkDraft:
        first, last = self.tokens[0], self.tokens[end - 1]
        text = self._slice(first.start, last.end)
        element = self.elements[first.element]
        draft = ChunkDraft(
            ordinal=self.ordinal,
            text=text,
            start=first.start,
            end=last.end,
            page=element.page,
            title_path=element.title_path,
            token_count=end,
        )
        self.ordinal += 1
        return draft

    def _slice(self, start: int, end: int) -> str:
        if self.text_parts:
            self.text += "".join(self.text_parts)
            self.text_parts.clear()
        # Forget text no window can reach any more (everything before this window's start).
        if start > self.text_base:
            self.text = self.text[start - self.text_base :]
            self.text_base = start
        return self.text[start - self.text_base : end - self.text_base]
