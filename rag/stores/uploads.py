"""Original uploads, kept by the SHA-256 of their bytes (the document id), behind `Uploads`.

`UploadStore` keeps them as files, `uploads/<sha256>` in the data directory; `PgUploadStore`
keeps them in PostgreSQL (`RAG_DATABASE_URL`), so that any worker can parse them without a
shared disk. `build_uploads` picks one.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

from rag.errors import NotFound
from rag.files import fsync_dir
from rag.settings import Settings
from rag.stores.postgres import PostgresDatabase

BLOCK = 1 << 20


def sha256_file(path: Path) -> str:
    """The hex SHA-256 of a file's bytes: its document id."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(BLOCK):
            digest.update(block)
    return digest.hexdigest()


class Uploads(Protocol):
    """Where the original bytes of each document are kept, by its hash."""

    def open(self) -> None: ...

    def has(self, doc_id: str) -> bool: ...

    def keep(self, source: Path, doc_id: str) -> object:
        """Copy the file in unless the same bytes are already kept."""

    def adopt(self, source: Path, doc_id: str) -> bool:
        """Take a staged file (it may be moved); True when newly kept."""

    def local(self, doc_id: str) -> contextlib.AbstractContextManager[Path]:
        """A local file with the bytes, for the parser."""

    def remove(self, doc_id: str) -> None: ...


class UploadStore:
    """Keeps each distinct upload once, named by its hash, in the data directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def open(self) -> None:
        """Nothing to open: the directory is made when the first file is kept."""

    def path(self, doc_id: str) -> Path:
        return self.directory / doc_id

    def has(self, doc_id: str) -> bool:
        return self.path(doc_id).exists()

    def adopt(self, source: Path, doc_id: str) -> bool:
        """Move a staged file (same file system) in durably; False when already kept."""
        target = self.path(doc_id)
        if target.exists():
            return False
        self.directory.mkdir(parents=True, exist_ok=True)
        os.replace(source, target)
        fsync_dir(target.parent)
        return True

    @contextlib.contextmanager
    def local(self, doc_id: str) -> Iterator[Path]:
        path = self.path(doc_id)
        if not path.exists():
            raise NotFound(f"The upload of document {doc_id} is missing from {self.directory}.",
                           "Upload the file again.")
        yield path

    def keep(self, source: Path, doc_id: str) -> Path:
        """Copy `source` in atomically unless the same bytes are already kept."""
        target = self.path(doc_id)
        if target.exists():
            return target
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{doc_id}.{os.getpid()}.tmp")
        with open(source, "rb") as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst, BLOCK)
            dst.flush()
            os.fsync(dst.fileno())
        os.replace(tmp, target)
        fsync_dir(self.directory)
        return target

    def remove(self, doc_id: str) -> None:
        self.path(doc_id).unlink(missing_ok=True)


class PgUploadStore(PostgresDatabase):
    """Original uploads in `upload_parts`, in parts of 1 MiB (bounded memory both ways)."""

    def __init__(self, url: str, scratch: Path) -> None:
        super().__init__(url)
        self.scratch = scratch  # where a worker writes a copy to parse

    def has(self, doc_id: str) -> bool:
        return bool(self._query("SELECT 1 FROM upload_parts WHERE document_id = ? AND part = 0",
                                (doc_id,)))

    def keep(self, source: Path, doc_id: str) -> bool:
        """Store the file's bytes in one transaction unless they are there; True when stored."""
        with self.transaction() as db:
            self.serialize(db, f"upload:{doc_id}")
            if db.execute("SELECT 1 FROM upload_parts WHERE document_id = ? AND part = 0",
                          (doc_id,)).fetchone():
                return False
            with open(source, "rb") as f:
                part = 0
                while block := f.read(BLOCK):
                    db.execute("INSERT INTO upload_parts (document_id, part, data) "
                               "VALUES (?, ?, ?)", (doc_id, part, block))
                    part += 1
        return True

    def adopt(self, source: Path, doc_id: str) -> bool:
        """Take a staged upload (its file is removed by the caller); True when stored."""
        return self.keep(source, doc_id)

    @contextlib.contextmanager
    def local(self, doc_id: str) -> Iterator[Path]:
        """A local copy of the upload for the parser, removed afterwards."""
        self.scratch.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{doc_id[:16]}.", dir=self.scratch)
        path = Path(name)
        try:
            with os.fdopen(fd, "wb") as out:
                parts = 0
                while rows := self._query("SELECT data FROM upload_parts WHERE document_id = ? "
                                          "AND part = ?", (doc_id, parts)):
                    out.write(rows[0][0])
                    parts += 1
            if parts == 0:
                raise NotFound(f"The upload of document {doc_id} is not in the database.",
                               "Upload the file again.")
            yield path
        finally:
            path.unlink(missing_ok=True)

    def remove(self, doc_id: str) -> None:
        self.execute("DELETE FROM upload_parts WHERE document_id = ?", (doc_id,))


def build_uploads(settings: Settings) -> Uploads:
    """In PostgreSQL with `RAG_DATABASE_URL` (no shared disk), else `uploads/` on disk."""
    if settings.database_url:
        return PgUploadStore(settings.database_url, settings.data_dir / "tmp")
    return UploadStore(settings.uploads_dir)
