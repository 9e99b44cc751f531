"""Sentence spans with exact offsets: the units that evidence is chosen from and answers checked by.

sentencex (Wikimedia's rule-based segmenter) finds the sentences; its pieces join back to the
input exactly, so offsets are sums of lengths. Text without sentence punctuation (a CSV, code,
a list) still yields usable spans: table rows and list items are spans of their own, a piece
longer than `max_chars` is cut at line breaks, and a line still too long into windows that end
at whitespace.

A table (rendered by the parser one row a line, cells joined by " | ") is evidence row by row,
cut only at its line breaks (a long row into windows), never inside a row at a full stop:
each row keeps its table's header line (`headed_spans`), and what a row means, as ranking,
embedding and the prompt read it, is the row with its header (`with_header`: "Extension: .pdf;
Format: PDF"); the span itself stays the row, so quotes keep exact offsets.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Protocol

import sentencex

MAX_CHARS = 400  # ~100 MiniLM tokens: longer spans are cut (the model reads at most 256)
_LIST_ITEM = re.compile(r"\n(?=[ \t]*(?:[-*•+]|\d+[.)])\s)")
_LINE = re.compile(r"[^\n]+")
_CELL_SEP = " | "


class Headed(Protocol):
    """A span's text and, for a table row, its table's header line."""

    @property
    def text(self) -> str: ...

    @property
    def header(self) -> str | None: ...


def sentence_spans(text: str, max_chars: int = MAX_CHARS) -> list[tuple[int, int]]:
    """(start, end) of each sentence of `text`, whitespace trimmed; `text[start:end]` is it."""
    spans: list[tuple[int, int]] = []
    offset = 0
    for piece in sentencex.segment("en", text):
        for start, end in _parts(piece, max_chars):
            spans.append((offset + start, offset + end))
        offset += len(piece)
    return spans


def _parts(piece: str, max_chars: int) -> Iterator[tuple[int, int]]:
    """A segmenter piece as spans: cut before list items, then long blocks at lines, then
    long lines into windows."""
    cuts = [match.start() + 1 for match in _LIST_ITEM.finditer(piece)]
    bounds = [0, *cuts, len(piece)]
    for b_start, b_end in zip(bounds, bounds[1:], strict=False):
        block = piece[b_start:b_end].strip()
        if len(block) <= max_chars and not _is_table(block):
            yield from _trimmed(piece, b_start, b_end)
            continue
        for line in _LINE.finditer(piece, b_start, b_end):
            yield from _windows(piece, line.start(), line.end(), max_chars)


def _is_table(block: str) -> bool:
    """Rows as the parser renders tables ("a | b" per line): each row is a span of its own."""
    lines = block.splitlines()
    return len(lines) > 1 and all(" | " in line for line in lines)


def _trimmed(text: str, start: int, end: int) -> Iterator[tuple[int, int]]:
    """The span without its surrounding whitespace, if anything is left."""
    part = text[start:end]
    left = len(part) - len(part.lstrip())
    right = len(part.rstrip())
    if right > left:
        yield start + left, start + right


def _windows(text: str, start: int, end: int, max_chars: int) -> Iterator[tuple[int, int]]:
    """Cut text[start:end] into windows of at most `max_chars`, ending at whitespace if any."""
    while start < end:
        stop = min(start + max_chars, end)
        if stop < end:
            space = text.rfind(" ", start + max_chars // 2, stop)
            stop = space if space > start else stop
        yield from _trimmed(text, start, stop)
        start = stop


def headed_spans(text: str, table: bool = False,
                 max_chars: int = MAX_CHARS) -> list[tuple[int, int, str | None]]:
    """`sentence_spans` of `text`, each with its header: for the rows of a `table` element (the
    parser's " | " lines), the table's first line; None for the header itself and for text."""
    spans = line_spans(text, max_chars) if table else sentence_spans(text, max_chars)
    header = table_header(text) if table else None
    if header is None:
        return [(start, end, None) for start, end in spans]
    below = text.index(header) + len(header)
    return [(start, end, header if start >= below else None) for start, end in spans]


def line_spans(text: str, max_chars: int = MAX_CHARS) -> list[tuple[int, int]]:
    """(start, end) of each line of `text` (a table's rows), a line longer than `max_chars` cut
    into windows; never split inside a line at sentence punctuation ("No." in a cell)."""
    return [span for line in _LINE.finditer(text)
            for span in _windows(text, line.start(), line.end(), max_chars)]


def cells(line: str) -> list[str]:
    """A table line's cells, each stripped; empty ones kept ("| Q1 | Q2": "", "Q1", "Q2")."""
    return [cell.strip() for cell in line.split("|")]


def table_header(text: str) -> str | None:
    """A table's header line: its first line, when it has cells and rows follow it."""
    lines = [line.strip() for line in text.strip().splitlines()]
    if len(lines) < 2 or _CELL_SEP not in lines[0]:
        return None
    return lines[0]


def with_header(span: Headed) -> str:
    """What a span says, as ranking, embedding and the prompt read it: a table row as its
    header's cells paired with its own ("Extension: .pdf; Format: PDF"), or, where the cells do
    not pair (a long row cut in windows), the header line above the row; other spans as they are.
    """
    if not span.header:
        return span.text
    names, values = cells(span.header), cells(span.text)
    if len(names) != len(values):
        return f"{span.header}\n{span.text}"
    pairs = [f"{name}: {value}" if name else value
             for name, value in zip(names, values, strict=True) if value]
    return "; ".join(pairs)
