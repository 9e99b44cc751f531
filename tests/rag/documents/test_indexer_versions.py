"""New versions through the document indexer (the real embedder; embedded mode, and with
PostgreSQL where the swap goes out through the change log): the old version answers until
the new one is indexed, unchanged chunks keep their vectors, a new
version that fails leaves the old one current, one whose index update fails after the swap
stays current (the index rebuilt from the store), and deleting removes every version."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rag.errors import EmptyDocument
from rag.index.live import LiveIndex
from rag.index.vectors import read_manifest
from rag.service import RagService
from rag.stores.uploads import sha256_file
from rag.types import ChunkDraft, Document

pytestmark = pytest.mark.slow

TOPICS = ("lighthouse", "orchard", "glacier", "foundry", "harbour", "vineyard", "quarry",
          "monastery", "canal", "observatory", "mill", "bridge")


def sections(changed: int | None = None) -> str:
    """A Markdown guide of twelve sections of some 230 tokens; `changed` rewrites one."""
    parts = []
    for n, topic in enumerate(TOPICS):
        body = " ".join(f"The {topic} record {n}.{k} notes {k * 7 + n} visitors on day {k}."
                        for k in range(22))
        if n == changed:
            body = body.replace("visitors", "cyclists")
        parts.append(f"# The {topic}\n\n{body}")
    return "\n\n".join(parts)


def searchable_texts(service: RagService) -> set[str]:
    ids = [int(i) for i in service.store.searchable_ids()]
    assert sorted(ids) == sorted(int(i) for i in service.index.index.search(
        np.zeros((1, service.embedder.dimension), np.float32), 10_000, None)[1][0] if i >= 0)
    return {c.text for c in service.store.get_chunks(ids).values()}


@pytest.mark.parametrize("mode", ["embedded", "postgres"])
def test_a_new_version_swaps_in_once_indexed_reusing_unchanged_vectors(
    make_service: Any, tmp_path: Path, mode: str, request: pytest.FixtureRequest
) -> None:
    overrides = {"database_url": request.getfixturevalue("pg_url")} if mode == "postgres" else {}
    service: RagService = make_service(**overrides)
    path = tmp_path / "guide.md"
    path.write_text(sections())
    first = service.documents.ingest_file(path, "guide.md")
    old_texts = searchable_texts(service)
    old_vectors = dict(zip([service.store.get_chunks([i])[i].text
                            for i in service.store.chunk_ids(first.id)],
                           service.store.vectors(service.store.chunk_ids(first.id)), strict=True))
    path.write_text(sections(changed=5))
    seen: list[set[str]] = []

    def progress(stage: str, done: int, total: int | None) -> None:
        if stage == "index" and done == 0:  # processed, about to be swapped in
            seen.append(searchable_texts(service))

    second = service.documents.ingest_file(path, "guide.md", progress=progress)
    assert seen == [old_texts]  # until then, the old version alone answered
    assert (second.version, second.lineage, second.state) == (2, first.lineage, "indexed")
    new_texts = searchable_texts(service)
    assert new_texts == {c.text for c in service.store.get_chunks(
        service.store.chunk_ids(second.id)).values()}
    changed = new_texts - old_texts
    assert 1 <= len(changed) < second.chunk_count // 2
    assert second.reused_chunks == second.chunk_count - len(changed)
    for cid in service.store.chunk_ids(second.id):
        text = service.store.get_chunks([cid])[cid].text
        if text in old_texts:  # reused as stored, not embedded again
            assert np.array_equal(service.store.vectors([cid])[0], old_vectors[text])
    old = service.documents.get(first.id)
    assert old is not None and old.state == "replaced" and not service.uploads.has(first.id)
    assert [v.id for v in service.documents.versions(second.id)] == [first.id, second.id]
    assert service.documents.delete(first.id)  # any version's id deletes them all
    assert service.documents.versions(second.id) == [] and searchable_texts(service) == set()


def test_a_failing_new_version_leaves_the_old_one_current(
    make_service: Any, tmp_path: Path
) -> None:
    service: RagService = make_service()
    path = tmp_path / "notes.md"
    path.write_text("The Corran ferry leaves the north pier every 40 minutes.")
    first = service.documents.ingest_file(path, "notes.md")
    before = searchable_texts(service)
    path.write_text("   \n\n   \n")  # passes the upload checks, holds no text
    with pytest.raises(EmptyDocument):
        service.documents.ingest_file(path, "notes.md")
    versions = service.documents.versions(first.id)
    assert [(v.version, v.state) for v in versions] == [(1, "indexed"), (2, "failed")]
    assert versions[1].error and "no text" in versions[1].error
    assert searchable_texts(service) == before
    listed, _ = service.documents.page()
    assert {d.id for d in listed} == {first.id, versions[1].id}  # the failure is shown
    path.write_text("The Corran ferry leaves the north pier every 30 minutes.")
    third = service.documents.ingest_file(path, "notes.md")
    assert third.version == 3
    assert [v.state for v in service.documents.versions(first.id)] == [
        "replaced", "replaced", "indexed"]


def swap_with_save_failing(
    service: RagService, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: BaseException
) -> tuple[str, str]:
    """Index one-chunk notes, then a one-chunk new version whose index save (after the store
    swapped it in) raises `error` once; returns (old id, new id)."""
    path = tmp_path / "ferry.md"
    path.write_text("The Corran ferry leaves the north pier every 40 minutes.")
    first = service.documents.ingest_file(path, "ferry.md")
    index = service.index._faiss()
    real_save = index.save
    calls: list[int] = []

    def save() -> Any:
        calls.append(1)
        if len(calls) == 1:
            raise error
        return real_save()

    monkeypatch.setattr(index, "save", save)
    path.write_text("The Corran ferry leaves the south slipway every 25 minutes.")
    new_id = sha256_file(path)
    try:
        service.documents.ingest_file(path, "ferry.md")
    except KeyboardInterrupt:
        assert isinstance(error, KeyboardInterrupt)
    monkeypatch.setattr(index, "save", real_save)
    return first.id, new_id


def check_swapped(service: RagService, old_id: str, new_id: str) -> None:
    old, new = service.documents.get(old_id), service.documents.get(new_id)
    assert old is not None and old.state == "replaced"
    assert new is not None and (new.state, new.version) == ("indexed", 2)
    assert new.chunk_count == 1 and service.store.chunk_ids(new_id)


def test_an_interrupt_after_the_swap_keeps_the_new_version_and_the_next_start_rebuilds(
    make_service: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C in the index save, once the store has swapped: the new version stays indexed
    with its chunks, and the next load finds the saved index stale though its vector count
    equals the store's (one chunk each), and rebuilds it."""
    service: RagService = make_service()
    old_id, new_id = swap_with_save_failing(service, tmp_path, monkeypatch, KeyboardInterrupt())
    check_swapped(service, old_id, new_id)
    [new_chunk] = service.store.chunk_ids(new_id)
    later = LiveIndex(service.settings, service.store)  # the next start
    later.load(service.embedder.dimension)
    _, hits = later.index.search(service.store.vectors([new_chunk]), 5)
    assert [int(i) for i in hits[0] if i >= 0] == [new_chunk]


def test_an_index_error_after_the_swap_rebuilds_the_index_from_the_store(
    make_service: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    service: RagService = make_service()
    old_id, new_id = swap_with_save_failing(service, tmp_path, monkeypatch,
                                            OSError(28, "No space left on device"))
    check_swapped(service, old_id, new_id)
    assert searchable_texts(service) == {
        "The Corran ferry leaves the south slipway every 25 minutes."}
    manifest = read_manifest(service.settings.index_dir)
    assert manifest is not None and manifest.store_mark == service.store.searchable_mark()


def test_a_version_retired_while_it_was_processed_leaves_no_chunks(make_service: Any) -> None:
    """v2 is still being processed (its chunks being stored) when v3 is swapped in over it:
    once its job ends, or is retried, nothing of it is left in the store."""
    service: RagService = make_service()
    dim = service.embedder.dimension
    for doc_id in ("v2", "v3"):
        service.documents.register(Document(doc_id, "a.md", "text/markdown", 3))
    draft = [ChunkDraft(0, "three", 0, 5, None, (), 1)]
    service.store.add_chunks("v3", draft, np.ones((1, dim), np.float32))
    assert service.store.promote("v3", None).replaced == ("v2",)
    service.store.add_chunks("v2", draft, np.ones((1, dim), np.float32))  # still running
    done = service.documents.process("v2")
    assert done.state == "replaced" and service.store.chunk_ids("v2") == []
