"""Original uploads, stored content-addressed: `uploads/<sha256>`."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

from rag.errors import NotFound
from rag.files import fsync_dir
from rag.settings import Settings

BLOCK = 1 << 20


def sha256_file(path: Path) -> str:
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


def build_uploads(settings: Settings) -> Uploads:
    """In PostgreSQL with `RAG_DATABASE_URL` (no shared disk), else `uploads/` on disk."""
    if settings.database_url:
        from rag.stores.pg_store import PgUploadStore

        return PgUploadStore(settings.database_url, settings.data_dir / "tmp")
    return UploadStore(settings.uploads_dir)
