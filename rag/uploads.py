"""Original uploads, stored content-addressed: `uploads/<sha256>`."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from rag.errors import EmptyDocument, NotFound, TooLarge
from rag.files import fsync_dir

BLOCK = 1 << 20


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(BLOCK):
            digest.update(block)
    return digest.hexdigest()


def check_size(path: Path, filename: str, max_bytes: int) -> int:
    """Refuse empty or oversized files by their size alone, before reading them."""
    try:
        size = path.stat().st_size
    except FileNotFoundError as exc:
        raise NotFound(f"File {filename!r} does not exist.", "Check the path.") from exc
    if size == 0:
        raise EmptyDocument(f"File {filename!r} is empty.", "Upload a file with content.")
    if size > max_bytes:
        raise TooLarge(
            f"File {filename!r} is {size} bytes, over the limit of {max_bytes} bytes.",
            "Split it, or raise RAG_MAX_FILE_BYTES.",
        )
    return size


class UploadStore:
    """Keeps each distinct upload once, named by its hash."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def path(self, doc_id: str) -> Path:
        return self.directory / doc_id

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
