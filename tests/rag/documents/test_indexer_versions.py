"""New versions through the document indexer (the real embedder; embedded mode, and with
PostgreSQL where the swap goes out through the change log): the old version answers until
the new one is indexed, unchanged chunks keep their vectors, a new
version that fails leaves the old one current, and deleting removes every version."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rag.errors import EmptyDocument
from rag.service import RagService

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
    assert (second.version, second.lineage, second.state) == (2, first.id, "indexed")
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
