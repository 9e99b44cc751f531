"""The engine end to end with the packaged models: ingest, retrieve, answer, delete."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from rag.access import REFUSED, Reader
from rag.ask.service import AskRequest
from rag.errors import EmptyDocument, InvalidInput, TooLarge, UnsupportedType
from rag.service import RagService
from rag.types import NO_ANSWER

pytestmark = pytest.mark.slow

CORPUS = {
    "tides.md": "# Tides\n\nThe harbour of Port Vell has its highest tide at 7:40 in the "
    "morning.\n\nFishing boats leave an hour before high tide.",
    "bees.txt": "Honey bees in the Larkspur apiary produce 31 kilograms of honey per hive "
    "each summer. The beekeeper is called Miriam Oduya.",
    "rail.txt": "The Aldgate night train departs from platform 9 at 23:15 and reaches the "
    "coast at dawn.",
}


def write_corpus(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, text in CORPUS.items():
        (folder / name).write_text(text)
        paths.append(folder / name)
    return paths


@pytest.fixture()
def service(make_service, tmp_path: Path) -> RagService:  # type: ignore[no-untyped-def]
    svc = make_service()
    for path in write_corpus(tmp_path / "corpus"):
        svc.documents.ingest_file(path)
    return svc  # type: ignore[no-any-return]


def test_answer_cites_the_chunk_with_the_fact(service: RagService) -> None:
    answer = service.asking.ask(AskRequest("How many kilograms of honey does a hive produce?"))
    assert answer.citations, answer
    top = answer.citations[0]
    assert top.filename == "bees.txt" and "31 kilograms" in top.text
    assert answer.text and answer.usage.prompt_tokens > 0 and answer.usage.completion_tokens > 0
    assert answer.timings.total_ms >= answer.timings.first_token_ms > 0
    # The citation points at a real span of the parsed text.
    chunk = service.store.get_chunks([top.chunk_id])[top.chunk_id]
    assert chunk.text[: len(top.text)] == top.text or top.text in CORPUS["bees.txt"]


def test_second_ask_is_cached_and_same(service: RagService) -> None:
    first = service.asking.ask(AskRequest("When does the night train depart?"))
    second = service.asking.ask(AskRequest("when does the night train depart"))
    assert not first.cached and second.cached and second.text == first.text
    assert second.citations == first.citations


def test_a_cached_answer_goes_only_to_readers_of_its_sources(service: RagService) -> None:
    reader = Reader()  # the default tenant's key without groups: reads both documents
    ask = AskRequest("When does the night train depart?", reader=reader)
    first = service.asking.ask(ask)
    assert service.asking.ask(ask).cached and first.citations
    # its source moves out of the reader's sight (no key or index change clears the cache)
    rail = next(c.document_id for c in first.citations if c.filename == "rail.txt")
    doc = service.store.get_document(rail)
    assert doc is not None
    service.store.put_document(replace(doc, access=("ops",)))
    refused = REFUSED.snapshot().get("cache", 0)
    again = service.asking.ask(ask)
    assert not again.cached and "rail.txt" not in {c.filename for c in again.citations}
    assert REFUSED.snapshot().get("cache", 0) == refused + 1


def test_unrelated_question_gets_no_sources(service: RagService) -> None:
    answer = service.asking.ask(AskRequest("What is the orbital period of Neptune's moon Triton?"))
    assert answer.text == NO_ANSWER and answer.citations == ()


def test_same_bytes_twice_is_one_document(service: RagService, tmp_path: Path) -> None:
    copy = tmp_path / "copy-of-bees.txt"
    copy.write_text(CORPUS["bees.txt"])
    before = service.store.searchable_count()
    doc = service.documents.ingest_file(copy)
    assert doc.filename == "bees.txt" and service.store.searchable_count() == before


def test_delete_removes_vectors_chunks_and_cached_answers(service: RagService) -> None:
    q = AskRequest("Who is the beekeeper?")
    answer = service.asking.ask(q)
    doc_id = answer.citations[0].document_id
    assert service.documents.delete(doc_id)
    assert service.store.get_document(doc_id) is None
    assert not service.uploads.path(doc_id).exists()
    again = service.asking.ask(q)
    assert not again.cached
    assert all(c.document_id != doc_id for c in again.citations)
    assert service.documents.delete(doc_id) is False  # idempotent


@pytest.mark.parametrize("question", ["", "   ", "x" * 100_000])
def test_bad_questions(service: RagService, question: str) -> None:
    with pytest.raises(InvalidInput):
        service.asking.ask(AskRequest(question))


def test_bad_files_leave_the_index_alone(service: RagService, tmp_path: Path) -> None:
    before = service.store.searchable_count()
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    png = tmp_path / "image.pdf"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 100)
    with pytest.raises(EmptyDocument):
        service.documents.ingest_file(empty)
    with pytest.raises(UnsupportedType):
        service.documents.ingest_file(png)
    assert service.store.searchable_count() == before
    assert service.asking.ask(AskRequest("When is high tide in Port Vell?")).citations


def test_size_limit_refuses_before_reading(make_service, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    svc = make_service(max_file_bytes=10)
    big = tmp_path / "big.txt"
    big.write_text("x" * 11)
    with pytest.raises(TooLarge):
        svc.documents.ingest_file(big)


def test_index_is_rebuilt_from_the_store_when_it_is_lost(
    service: RagService, make_service  # type: ignore[no-untyped-def]
) -> None:
    count = service.store.searchable_count()
    for path in service.settings.index_dir.iterdir():
        path.unlink()
    reopened = RagService(service.settings, service.embedder, service.generator)
    reopened.load()
    assert reopened.index.index.count == count
    question = "Which platform does the night train leave from?"
    assert reopened.asking.ask(AskRequest(question)).citations


def test_model_change_needs_reindex_then_works(service: RagService) -> None:
    from rag.errors import IndexMismatch
    from rag.settings import Settings

    changed = Settings(**{**service.settings.model_dump(),
                          "embedding_model": str(service.embedder.model_source)})
    with pytest.raises(IndexMismatch, match="rag reindex"):
        RagService(changed, generator=service.generator).load()
    fresh = RagService(changed, generator=service.generator)
    fresh.load(fresh_index=True)
    done, failed = fresh.documents.reindex(reembed=True)
    assert (done, failed) == (3, [])
    answer = fresh.asking.ask(AskRequest("Which platform does the night train leave from?"))
    assert answer.citations[0].filename == "rail.txt"
