"""Document rows and their versions: the part of the chunk store about documents.

A document row is one version of a file. The same name in the same collection with new bytes
is a new row (its id is the hash of its bytes) with the next `version` of the same `lineage`:
a fresh id given to the first version, never a document's id (a replaced document's bytes may
come back under another name). Rows stored before versions have their own id as lineage, and
rows an older release inserts during a rolling upgrade have '', read as their own id.

Until it is indexed, the version it replaces stays searchable; then `promote` swaps them in
one transaction: the new chunks become searchable, the older versions of the lineage, and any
other current document of the same name and collection (duplicates a release before versions
made), lose their chunks and sentences and stay listed as `replaced`. Registering and
promoting a version hold a lock on the name, so uploads racing on one name get distinct
version numbers and end with one current version: a version finishing after a newer one was
promoted is itself `replaced`.
"The same name" means within one tenant and one set of access groups: two tenants, or a
group's document and the tenant's, never version (or learn of) each other.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from abc import abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from rag.access import EVERYONE, REFUSED, Reader, group_list
from rag.stores.sql import SqlRecords
from rag.types import Document

log = logging.getLogger(__name__)

# For each state, the states a document may reach it from (`set_state` refuses the rest and
# leaves the row as it is). processing -> queued: its job was interrupted or will be retried;
# indexed -> processing: re-processed (`rag reindex --reembed`, a retried job); failed ->
# cancelled or queued: the engine marks a stopped job's document failed, then the runner says why.
# `replaced` is reached only through `promote` and left by no transition.
TRANSITIONS: dict[str, frozenset[str]] = {
    "processing": frozenset({"queued", "failed", "cancelled", "indexed", "processing"}),
    "queued": frozenset({"processing", "failed", "cancelled"}),
    "failed": frozenset({"processing"}),
    "cancelled": frozenset({"queued", "processing", "failed"}),
}

DOC_COLUMNS = (
    "id, filename, content_type, size, collection, metadata, pages, chunk_count, state, "
    "error, created_at, updated_at, version, lineage, replaces, reused_chunks, tenant, access"
)
UPSERT = (
    f"INSERT INTO documents ({DOC_COLUMNS}) VALUES ({','.join('?' * 18)}) "
    "ON CONFLICT (id) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in DOC_COLUMNS.split(", ")[1:])
)
CURRENT = "state <> 'replaced'"
# The rows of a lineage (args: lineage, lineage): '' is read as the row's own id.
IN_LINEAGE = "(lineage = ? OR (id = ? AND lineage = ''))"


@dataclass(frozen=True)
class Promotion:
    """What `promote` did: the chunk count made searchable (0 when `superseded`: a newer
    version was promoted first, so this one is `replaced`), the versions it replaced and
    the chunk ids that stopped being searchable."""

    chunk_count: int
    superseded: bool = False
    replaced: tuple[str, ...] = ()
    removed_chunks: tuple[int, ...] = ()


class DocumentRecords(SqlRecords):
    """Document rows and versions; `ChunkStore` adds chunks and sentences."""

    @abstractmethod
    def _log(self, db: Any, op: str, doc_id: str) -> None:
        """Record the document's chunk ids as added or removed, inside transaction `db`."""

    def put_document(self, doc: Document) -> Document:
        """Insert or update a document row as given (created_at is kept on update)."""
        with self.transaction() as db:
            existing = _get(db, doc.id)
            created = existing.created_at if existing else (doc.created_at or time.time())
            return _upsert(db, replace(doc, created_at=created))

    def put_version(self, doc: Document) -> Document:
        """Store `doc` as the newest version of its name in its collection, among the
        documents of its tenant and access groups (a version never changes who reads a name,
        and an upload never touches, or learns of, a same-named document it may not read).

        A row of the same id that is a current version of that name keeps its version (a
        retried upload); otherwise a name with current versions gets the next version of
        their lineage, replacing the indexed one; a new name starts a lineage at version 1.
        """
        with self.transaction() as db:
            self.serialize(db, _name_key(doc))
            named = [_document(r) for r in db.execute(
                f"SELECT {DOC_COLUMNS} FROM documents WHERE tenant = ? AND collection = ? "
                f"AND filename = ? AND access = ? AND {CURRENT} "
                "ORDER BY version DESC, created_at DESC",
                (doc.tenant, doc.collection, doc.filename, access_text(doc))).fetchall()]
            same = next((d for d in named if d.id == doc.id), None)
            if same is not None:
                doc = replace(doc, version=same.version, lineage=same.lineage,
                              replaces=same.replaces, created_at=same.created_at)
            elif named:  # the newest current one's lineage (duplicates have their own)
                newest = max(named, key=lambda d: (d.created_at or 0.0, d.version))
                top = db.execute(f"SELECT MAX(version) FROM documents WHERE {IN_LINEAGE}",
                                 (newest.lineage, newest.lineage)).fetchone()[0]
                indexed = max((d for d in named if d.state == "indexed"),
                              key=lambda d: (d.created_at or 0.0, d.version), default=None)
                doc = replace(doc, version=int(top or newest.version) + 1,
                              lineage=newest.lineage,
                              replaces=indexed.id if indexed else None, created_at=time.time())
            else:
                doc = replace(doc, version=1, lineage=new_lineage(), replaces=None,
                              created_at=time.time())
            return _upsert(db, replace(doc, reused_chunks=0))

    def get_document(self, doc_id: str) -> Document | None:
        rows = self._query(f"SELECT {DOC_COLUMNS} FROM documents WHERE id = ?", (doc_id,))
        return _document(rows[0]) if rows else None

    def readable_document(self, doc_id: str, reader: Reader, refusal: str) -> Document | None:
        """The document when `reader` may read it; None when it is absent or hidden (a hidden
        one counted in `REFUSED` as `refusal`: callers answer both alike)."""
        doc = self.get_document(doc_id)
        if doc is not None and not reader.may_read(doc.tenant, doc.access):
            REFUSED.add(refusal)
            return None
        return doc

    def readable_documents(self, doc_ids: Iterable[str], reader: Reader) -> set[str]:
        """Those of `doc_ids` that exist and `reader` may read."""
        ids = sorted(set(doc_ids))
        if not ids:
            return set()
        readable, args = reader_clause(reader)
        rows = self._query(f"SELECT id FROM documents WHERE id IN ({','.join('?' * len(ids))}) "
                           f"AND {readable}", [*ids, *args])
        return {r[0] for r in rows}

    def versions(self, doc_id: str) -> list[Document]:
        """Every version of the document's lineage, oldest first ([] when it is unknown)."""
        doc = self.get_document(doc_id)
        if doc is None:
            return []
        rows = self._query(
            f"SELECT {DOC_COLUMNS} FROM documents WHERE {IN_LINEAGE} ORDER BY version, created_at",
            (doc.lineage, doc.lineage))
        return [_document(r) for r in rows]

    def list_documents(
        self, collection: str | None = None, offset: int = 0, limit: int = 50,
        reader: Reader = EVERYONE,
    ) -> tuple[list[Document], int]:
        """Current versions (not `replaced`) `reader` may read, oldest first, and their total."""
        readable, args = reader_clause(reader)
        where = f"WHERE {CURRENT} AND {readable}"
        if collection:
            where, args = f"{where} AND collection = ?", [*args, collection]
        total = self._query(f"SELECT COUNT(*) FROM documents {where}", args)[0][0]
        rows = self._query(
            f"SELECT {DOC_COLUMNS} FROM documents {where} ORDER BY created_at, id LIMIT ? OFFSET ?",
            [*args, limit, offset],
        )
        return [_document(r) for r in rows], int(total)

    def set_state(self, doc_id: str, state: str, error: str | None = None) -> bool:
        """Move a document to `state` when TRANSITIONS allow it from where it is; False (and
        a warning) when they do not or the document is gone."""
        before = sorted(TRANSITIONS[state])
        marks = ",".join("?" * len(before))
        changed = self.execute(
            f"UPDATE documents SET state = ?, error = ?, updated_at = ? WHERE id = ? "
            f"AND state IN ({marks})", (state, error, time.time(), doc_id, *before))
        if not changed:
            doc = self.get_document(doc_id)
            log.warning("document %s stays %s (not %s)", doc_id[:12],
                        doc.state if doc else "deleted", state)
        return bool(changed)

    def collections(self, reader: Reader = EVERYONE) -> set[str]:
        """The collections holding a document `reader` may read."""
        readable, args = reader_clause(reader)
        return {r[0] for r in self._query(
            f"SELECT DISTINCT collection FROM documents WHERE {readable}", args)}

    def promote(self, doc_id: str, pages: int | None) -> Promotion:
        """Make a processed version searchable and replace its lineage's older versions, in
        one transaction; a version a newer one was promoted over is `replaced` instead."""
        with self.transaction() as db:
            doc = _get(db, doc_id)
            if doc is None:  # deleted while it was processed: drop what it stored
                db.execute("DELETE FROM chunks WHERE document_id = ?", (doc_id,))
                db.execute("DELETE FROM sentences WHERE document_id = ?", (doc_id,))
                return Promotion(0, superseded=True)
            self.serialize(db, _name_key(doc))
            doc = _get(db, doc_id) or doc
            others = _rivals(db, doc)
            if doc.state == "replaced" or any(
                    _newer(o, doc) and o.state == "indexed" for o in others):
                _retire(db, doc_id)
                return Promotion(0, superseded=True, replaced=(doc_id,))
            older = [o.id for o in others if not _newer(o, doc)]
            removed = _chunk_ids(db, older)
            reused = _reused(db, doc_id, doc.replaces) if doc.replaces else 0
            for old in older:
                self._log(db, "remove", old)
                _retire(db, old)
            count = int(db.execute("SELECT COUNT(*) FROM chunks WHERE document_id = ?",
                                   (doc_id,)).fetchone()[0])
            db.execute(
                "UPDATE documents SET state = 'indexed', error = NULL, chunk_count = ?, "
                "pages = ?, reused_chunks = ?, updated_at = ? WHERE id = ?",
                (count, pages, reused, time.time(), doc_id))
            self._log(db, "add", doc_id)
        return Promotion(count, replaced=tuple(older), removed_chunks=tuple(removed))

    def mark_indexed(self, doc_id: str, pages: int | None) -> int:
        """`promote`, for callers that only need the chunk count."""
        return self.promote(doc_id, pages).chunk_count

    def delete_lineage(self, doc_id: str) -> tuple[list[str], list[int]]:
        """Remove every version of the document's lineage with its chunks and sentences, in
        one transaction; returns the removed document ids and chunk ids."""
        with self.transaction() as db:
            doc = _get(db, doc_id)
            if doc is None:
                return [], []
            self.serialize(db, _name_key(doc))
            ids = [r[0] for r in db.execute(f"SELECT id FROM documents WHERE {IN_LINEAGE}",
                                            (doc.lineage, doc.lineage)).fetchall()] or [doc_id]
            removed = _chunk_ids(db, ids)
            for one in ids:
                self._log(db, "remove", one)
                db.execute("DELETE FROM chunks WHERE document_id = ?", (one,))
                db.execute("DELETE FROM sentences WHERE document_id = ?", (one,))
                db.execute("DELETE FROM documents WHERE id = ?", (one,))
        return ids, removed


def reader_clause(reader: Reader, table: str = "") -> tuple[str, list[Any]]:
    """A SQL condition on `documents` (aliased `table`) true for the rows `reader` may read,
    and its arguments. A group is found in the row's JSON list as its quoted name (names are
    plain: `rag.access.valid_name`) by `replace`, which is case-sensitive in SQLite and
    PostgreSQL alike (SQLite's LIKE is not: "LEGAL" would read "legal")."""
    if reader.everything:
        return "1 = 1", []
    column = f"{table}." if table else ""
    sql, args = f"{column}tenant = ?", [reader.tenant]
    if not reader.all_groups:
        groups = sorted(reader.groups)
        holds = "".join(f" OR replace({column}access, ?, '') <> {column}access" for _ in groups)
        args += [f'"{g}"' for g in groups]
        sql += f" AND ({column}access = '[]'{holds})"
    return sql, args


def new_lineage() -> str:
    """A fresh lineage id: never a document id, so a replaced document's bytes uploaded again
    under another name never join (or delete with) the versions that replaced them."""
    return f"lineage-{uuid.uuid4().hex}"


def _rivals(db: Any, doc: Document) -> list[Document]:
    """The other current rows of the document's lineage, and of its name and collection."""
    rows = db.execute(
        f"SELECT {DOC_COLUMNS} FROM documents WHERE id <> ? AND {CURRENT} AND ({IN_LINEAGE} "
        "OR (tenant = ? AND collection = ? AND filename = ? AND access = ?))",
        (doc.id, doc.lineage, doc.lineage, doc.tenant, doc.collection, doc.filename,
         access_text(doc))).fetchall()
    return [_document(r) for r in rows]


def _newer(other: Document, doc: Document) -> bool:
    """Whether `other` came after `doc`: a later version of its lineage, or (a duplicate of
    its name in another lineage) uploaded later."""
    if other.lineage == doc.lineage:
        return other.version > doc.version
    return (other.created_at or 0.0) > (doc.created_at or 0.0)


def _name_key(doc: Document) -> str:
    return f"rag:document-name:{doc.tenant}/{access_text(doc)}/{doc.collection}/{doc.filename}"


def access_text(doc: Document) -> str:
    """The document's groups as stored: a sorted JSON list ('[]': the whole tenant)."""
    return json.dumps(list(group_list(doc.access)))


def _get(db: Any, doc_id: str) -> Document | None:
    row = db.execute(f"SELECT {DOC_COLUMNS} FROM documents WHERE id = ?", (doc_id,)).fetchone()
    return _document(row) if row else None


def _upsert(db: Any, doc: Document) -> Document:
    doc = replace(doc, updated_at=time.time(), lineage=doc.lineage or new_lineage())
    db.execute(UPSERT, (
        doc.id, doc.filename, doc.content_type, doc.size, doc.collection,
        json.dumps(dict(doc.metadata)), doc.pages, doc.chunk_count, doc.state, doc.error,
        doc.created_at, doc.updated_at, doc.version, doc.lineage, doc.replaces,
        doc.reused_chunks, doc.tenant, access_text(doc)))
    return doc


def _retire(db: Any, doc_id: str) -> None:
    """Drop a version's chunks and sentences and mark it replaced."""
    db.execute("DELETE FROM chunks WHERE document_id = ?", (doc_id,))
    db.execute("DELETE FROM sentences WHERE document_id = ?", (doc_id,))
    db.execute("UPDATE documents SET state = 'replaced', chunk_count = 0, updated_at = ? "
               "WHERE id = ?", (time.time(), doc_id))


def _chunk_ids(db: Any, doc_ids: Sequence[str]) -> list[int]:
    if not doc_ids:
        return []
    marks = ",".join("?" * len(doc_ids))
    rows = db.execute(f"SELECT id FROM chunks WHERE document_id IN ({marks}) ORDER BY id",
                      tuple(doc_ids)).fetchall()
    return [int(r[0]) for r in rows]


def _reused(db: Any, doc_id: str, previous: str) -> int:
    """How many of the document's chunks have the text of a chunk of `previous` (their
    vectors were taken from it rather than embedded again)."""
    return int(db.execute(
        "SELECT COUNT(*) FROM chunks WHERE document_id = ? AND text IN "
        "(SELECT text FROM chunks WHERE document_id = ?)", (doc_id, previous)).fetchone()[0])


def _document(row: Sequence[Any]) -> Document:
    meta: Mapping[str, Any] = json.loads(row[5]) if row[5] else {}
    return Document(
        id=row[0], filename=row[1], content_type=row[2], size=row[3], collection=row[4],
        metadata=meta, pages=row[6], chunk_count=row[7], state=row[8], error=row[9],
        created_at=row[10], updated_at=row[11], version=row[12], lineage=row[13] or row[0],
        replaces=row[14], reused_chunks=row[15], tenant=row[16],
        access=tuple(json.loads(row[17] or "[]")),
    )
