"""Chunking: windows, overlap, element alignment and exact offsets, checked by hand."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from rag.documents.chunking import Chunker, check_window, parsed_text
from rag.errors import ConfigError
from rag.types import Element


@pytest.fixture(scope="module")
def word_tokenizer() -> PreTrainedTokenizerFast:
    """One token per whitespace-separated word, so offsets can be checked by hand."""
    tok = Tokenizer(models.WordLevel(vocab={"[UNK]": 0}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]")


def texts(chunks):  # type: ignore[no-untyped-def]
    return [c.text for c in chunks]


def test_windows_and_offsets_by_hand(word_tokenizer: PreTrainedTokenizerFast) -> None:
    # "a0 a1 ... a9": token i covers chars [3i, 3i+2)
    element = Element(" ".join(f"a{i}" for i in range(10)))
    chunks = list(Chunker(word_tokenizer, size=4, overlap=1).chunk([element]))
    assert texts(chunks) == ["a0 a1 a2 a3", "a3 a4 a5 a6", "a6 a7 a8 a9"]
    assert [(c.start, c.end) for c in chunks] == [(0, 11), (9, 20), (18, 29)]
    assert [c.ordinal for c in chunks] == [0, 1, 2]
    assert [c.token_count for c in chunks] == [4, 4, 4]


def test_last_window_is_short_and_nothing_is_lost(word_tokenizer: PreTrainedTokenizerFast) -> None:
    element = Element("w1 w2 w3 w4 w5 w6 w7")
    chunks = list(Chunker(word_tokenizer, size=3, overlap=0).chunk([element]))
    assert texts(chunks) == ["w1 w2 w3", "w4 w5 w6", "w7"]
    assert (chunks[-1].start, chunks[-1].end) == (18, 20)


def test_offsets_span_elements_with_separator(word_tokenizer: PreTrainedTokenizerFast) -> None:
    elements = [Element("Title", "Title", page=1), Element("one two", page=1),
                Element("three four five", page=2)]
    full = parsed_text(elements)
    assert full == "Title\n\none two\n\nthree four five"
    chunks = list(Chunker(word_tokenizer, size=10, overlap=2).chunk(elements))
    assert len(chunks) == 1
    assert chunks[0].text == full and (chunks[0].start, chunks[0].end) == (0, len(full))


def test_window_ends_at_element_start_and_next_starts_there(
    word_tokenizer: PreTrainedTokenizerFast,
) -> None:
    # tokens: p1 p2 p3 p4 p5 | q1 q2 q3 q4 q5 q6 ; size 8 overlap 2
    elements = [Element("p1 p2 p3 p4 p5", page=1, title_path=("A",)),
                Element("q1 q2 q3 q4 q5 q6", page=2, title_path=("B",))]
    full = parsed_text(elements)
    chunks = list(Chunker(word_tokenizer, size=8, overlap=2).chunk(elements))
    # The first window stops before the element that starts at token 5 (inside its second
    # half); the next one starts exactly at that element.
    assert texts(chunks) == ["p1 p2 p3 p4 p5", "q1 q2 q3 q4 q5 q6"]
    assert chunks[1].start == full.index("q1") == 16
    assert (chunks[1].page, chunks[1].title_path) == (2, ("B",))
    for c in chunks:
        assert full[c.start : c.end] == c.text


def test_overlap_snaps_to_element_start(word_tokenizer: PreTrainedTokenizerFast) -> None:
    # a1..a3 | b1..b6 with size 6, overlap 3: window 1 = a1 a2 a3 b1 b2 b3 (b1 is at index 3,
    # not in the second half of new tokens, so no early cut); the next start would be index 3,
    # which is b1: an element start.
    elements = [Element("a1 a2 a3"), Element("b1 b2 b3 b4 b5 b6")]
    full = parsed_text(elements)
    chunks = list(Chunker(word_tokenizer, size=6, overlap=3).chunk(elements))
    assert texts(chunks)[0] == "a1 a2 a3\n\nb1 b2 b3"
    assert chunks[1].text == "b1 b2 b3 b4 b5 b6"
    assert chunks[1].start == full.index("b1")


def test_real_tokenizer_offsets_are_exact(embedder) -> None:  # type: ignore[no-untyped-def]
    elements = [Element("Überschrift — naïve café", "Title"),
                Element("Ein Absatz mit Umlauten: äöü. " * 40),
                Element("日本語のテキストも含まれます。" * 10, page=3)]
    full = parsed_text(elements)
    chunks = list(Chunker(embedder.tokenizer, size=64, overlap=16).chunk(elements))
    assert len(chunks) > 3
    for c in chunks:
        assert full[c.start : c.end] == c.text
        assert c.token_count <= 64
    assert chunks[0].start == 0 and chunks[-1].end == len(full.rstrip())


def test_no_elements_no_chunks(word_tokenizer: PreTrainedTokenizerFast) -> None:
    assert list(Chunker(word_tokenizer, 4, 1).chunk([])) == []
    assert list(Chunker(word_tokenizer, 4, 1).chunk([Element("")])) == []


@pytest.mark.parametrize(("size", "overlap"), [(10, 10), (10, 11), (300, 10), (10, -1)])
def test_window_settings_are_validated(size: int, overlap: int) -> None:
    with pytest.raises(ConfigError):
        check_window(size, overlap, model_max=256)


def test_settings_refuse_overlap_not_below_size() -> None:
    from pydantic import ValidationError

    from rag.settings import Settings

    with pytest.raises(ValidationError, match="chunk_overlap"):
        Settings(chunk_size=50, chunk_overlap=50)
