"""Sentence spans with exact offsets: the units that evidence is chosen from and answers checked by.

sentencex (Wikimedia's rule-based segmenter) finds the sentences; its pieces join back to the
input exactly, so offsets are sums of lengths. Text without sentence punctuation (a CSV, code,
a list) still yields usable spans: table rows and list items are spans of their own, a piece
longer than `max_chars` is cut at line breaks, and a line still too long into windows that end
at whitespace.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import sentencex

MAX_CHARS = 400  # ~100 MiniLM tokens: longer spans are cut (the model reads at most 256)
_LIST_ITEM = re.compile(r"\n(?=[ \t]*(?:[-*•+]|\d+[.)])\s)")
_LINE = re.compile(r"[^\n]+")


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
