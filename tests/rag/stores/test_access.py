"""Tenants and access groups in the store, on SQLite and PostgreSQL: what each reader lists,
which collections and documents it may read, which chunks it may search, and names that are
per tenant."""

from __future__ import annotations

import numpy as np

from rag.access import DEFAULT_TENANT, EVERYONE, Reader
from rag.filters import MetadataFilter
from rag.stores.chunks import ChunkStore
from rag.types import ChunkDraft, Document, Query

ACME = Reader("acme")
ACME_LEGAL = Reader("acme", frozenset({"legal"}))
ACME_ADMIN = Reader("acme", all_groups=True)
GLOBEX = Reader("globex", frozenset({"legal"}))
DEFAULT = Reader(DEFAULT_TENANT)

# id: (tenant, access, collection)
DOCS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "acme-open": ("acme", (), "handbook"),
    "acme-legal": ("acme", ("legal", "board"), "contracts"),
    "acme-hr": ("acme", ("hr",), "handbook"),
    "globex-open": ("globex", (), "handbook"),
    "default-open": (DEFAULT_TENANT, (), "default"),
}


def add(store: ChunkStore, doc_id: str, tenant: str, access: tuple[str, ...] = (),
        collection: str = "default", texts: int = 2, name: str | None = None) -> list[int]:
    """An indexed document with `texts` chunks; returns their ids."""
    store.put_version(Document(doc_id, name or f"{doc_id}.txt", "text/plain", 10,
                               collection=collection, metadata={"id": doc_id},
                               state="processing", tenant=tenant, access=access))
    drafts = [ChunkDraft(i, f"{doc_id} {i}", i * 10, i * 10 + 6, None, (), 2)
              for i in range(texts)]
    ids = store.add_chunks(doc_id, drafts, np.ones((texts, 4), np.float32))
    store.promote(doc_id, None)
    return list(ids)


def corpus(store: ChunkStore) -> dict[str, list[int]]:
    return {doc_id: add(store, doc_id, tenant, access, collection)
            for doc_id, (tenant, access, collection) in DOCS.items()}


def listed(store: ChunkStore, reader: Reader, collection: str | None = None) -> set[str]:
    docs, total = store.list_documents(collection, reader=reader)
    assert total == len(docs)
    return {d.id for d in docs}


def test_tenant_and_access_are_stored_and_read_back(store: ChunkStore) -> None:
    corpus(store)
    doc = store.get_document("acme-legal")
    assert doc is not None and (doc.tenant, doc.access) == ("acme", ("board", "legal"))  # sorted
    other = store.get_document("globex-open")
    assert other is not None and (other.tenant, other.access) == ("globex", ())
    [version] = store.versions("acme-hr")
    assert (version.tenant, version.access) == ("acme", ("hr",))


def test_each_reader_lists_what_it_may_read(store: ChunkStore) -> None:
    corpus(store)
    assert listed(store, ACME) == {"acme-open"}
    assert listed(store, ACME_LEGAL) == {"acme-open", "acme-legal"}
    assert listed(store, Reader("acme", frozenset({"board", "hr"}))) == {
        "acme-open", "acme-legal", "acme-hr"}
    assert listed(store, ACME_ADMIN) == {"acme-open", "acme-legal", "acme-hr"}
    assert listed(store, GLOBEX) == {"globex-open"}  # its `legal` is not acme's
    assert listed(store, DEFAULT) == {"default-open"}
    assert listed(store, EVERYONE) == set(DOCS)
    assert listed(store, ACME_ADMIN, "handbook") == {"acme-open", "acme-hr"}
    assert listed(store, ACME_LEGAL, "contracts") == {"acme-legal"}
    assert listed(store, ACME, "contracts") == set()
    docs, total = store.list_documents(reader=ACME_ADMIN, offset=1, limit=1)
    assert total == 3 and len(docs) == 1


def test_collections_and_readable_documents_per_reader(store: ChunkStore) -> None:
    corpus(store)
    assert store.collections(ACME) == {"handbook"}
    assert store.collections(ACME_LEGAL) == {"handbook", "contracts"}
    assert store.collections(GLOBEX) == {"handbook"}
    assert store.collections(EVERYONE) == {"handbook", "contracts", "default"}
    asked = [*DOCS, "missing"]
    assert store.readable_documents(asked, ACME) == {"acme-open"}
    assert store.readable_documents(asked, ACME_LEGAL) == {"acme-open", "acme-legal"}
    assert store.readable_documents(asked, ACME_ADMIN) == {"acme-open", "acme-legal", "acme-hr"}
    assert store.readable_documents(asked, EVERYONE) == set(DOCS)
    assert store.readable_documents([], EVERYONE) == set()


def test_an_underscore_in_a_group_matches_only_itself(store: ChunkStore) -> None:
    add(store, "ab", "acme", ("a_b",))
    add(store, "axb", "acme", ("axb",))
    add(store, "aab", "acme", ("aab",))
    assert listed(store, Reader("acme", frozenset({"a_b"}))) == {"ab"}
    assert listed(store, Reader("acme", frozenset({"axb"}))) == {"axb"}
    assert listed(store, Reader("acme", frozenset({"a"}))) == set()  # no prefix match either
    assert store.readable_documents(["ab", "axb", "aab"], Reader("acme", frozenset({"a_b"}))) \
        == {"ab"}


def test_group_names_differing_in_case_are_two_groups(store: ChunkStore) -> None:
    add(store, "low", "acme", ("legal",))
    add(store, "up", "acme", ("LEGAL",))
    upper = Reader("acme", frozenset({"LEGAL"}))
    assert listed(store, upper) == {"up"}  # SQLite's LIKE would have matched both
    assert store.readable_documents(["low", "up"], upper) == {"up"}
    assert listed(store, Reader("acme", frozenset({"Legal"}))) == set()


def test_readable_ids_are_exactly_the_readers_chunks(store: ChunkStore) -> None:
    chunks = corpus(store)

    def readable(reader: Reader | None, **query: object) -> set[int] | None:
        ids = store.readable_ids(Query("q", reader=reader, **query))  # type: ignore[arg-type]
        return None if ids is None else {int(i) for i in ids}

    def of(*doc_ids: str) -> set[int]:
        return {i for d in doc_ids for i in chunks[d]}

    assert readable(None) is None and readable(EVERYONE) is None
    assert readable(ACME) == of("acme-open")
    assert readable(ACME_LEGAL) == of("acme-open", "acme-legal")
    assert readable(ACME_ADMIN) == of("acme-open", "acme-legal", "acme-hr")
    assert readable(GLOBEX) == of("globex-open")
    assert readable(ACME_ADMIN, collection="handbook") == of("acme-open", "acme-hr")
    assert readable(ACME, document_ids=("acme-open", "acme-legal", "globex-open")) == of(
        "acme-open")
    metadata = MetadataFilter.parse({"id": {"$in": ["acme-legal", "acme-hr", "globex-open"]}})
    assert readable(ACME_LEGAL, metadata=metadata) == of("acme-legal")
    assert readable(EVERYONE, metadata=metadata) == of("acme-legal", "acme-hr", "globex-open")


def test_a_reader_of_everything_indexed_needs_no_filter(store: ChunkStore) -> None:
    add(store, "acme-1", "acme")
    add(store, "acme-2", "acme", ("legal",))
    assert store.readable_ids(Query("q", reader=ACME_ADMIN)) is None
    ids = store.readable_ids(Query("q", reader=ACME))
    assert ids is not None and len(ids) == 2
    queued = Document("globex-1", "g.txt", "text/plain", 1, state="processing", tenant="globex")
    store.put_version(queued)  # not indexed: hides nothing searchable
    assert store.readable_ids(Query("q", reader=ACME_ADMIN)) is None
    add(store, "globex-2", "globex")
    ids = store.readable_ids(Query("q", reader=ACME_ADMIN))
    assert ids is not None and len(ids) == 4


def test_names_are_per_tenant(store: ChunkStore) -> None:
    add(store, "a1", "acme", name="report.pdf", collection="docs")
    add(store, "g1", "globex", name="report.pdf", collection="docs")
    first, other = store.get_document("a1"), store.get_document("g1")
    assert first is not None and other is not None
    assert (first.version, other.version) == (1, 1) and first.lineage != other.lineage
    assert (first.state, other.state) == ("indexed", "indexed")  # neither replaced the other
    assert [d.id for d in store.versions("g1")] == ["g1"]
    nxt = store.put_version(Document("a2", "report.pdf", "text/plain", 10, collection="docs",
                                     state="processing", tenant="acme"))
    assert (nxt.version, nxt.lineage, nxt.replaces) == (2, first.lineage, "a1")
    store.add_chunks("a2", [ChunkDraft(0, "new", 0, 3, None, (), 1)], np.ones((1, 4), np.float32))
    assert store.promote("a2", None).replaced == ("a1",)
    globex = store.get_document("g1")
    assert globex is not None and globex.state == "indexed"
    assert listed(store, EVERYONE, "docs") == {"a2", "g1"}


def test_a_groups_document_and_the_tenants_are_versioned_apart(store: ChunkStore) -> None:
    legal = store.put_version(Document("v-legal", "memo.md", "text/markdown", 1, tenant="acme",
                                       access=("legal",), state="indexed"))
    hr = store.put_version(Document("v-hr", "memo.md", "text/markdown", 1, tenant="acme",
                                    access=("hr",)))
    open_ = store.put_version(Document("v-all", "memo.md", "text/markdown", 1, tenant="acme"))
    assert (legal.version, hr.version, open_.version) == (1, 1, 1)
    assert len({legal.lineage, hr.lineage, open_.lineage}) == 3
    again = store.put_version(Document("v-legal2", "memo.md", "text/markdown", 2, tenant="acme",
                                       access=("legal",)))
    assert again.version == 2 and again.lineage == legal.lineage and again.replaces == "v-legal"
