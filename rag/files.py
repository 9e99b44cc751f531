"""Durable file writes: readers see the old file or the new one, never half of one."""

from __future__ import annotations

import errno
import os
import sqlite3
import threading
from pathlib import Path

from rag.errors import DiskFull


def fsync_dir(path: Path) -> None:
    """Flush a directory entry (a rename or a new file) to disk."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def write_atomic(path: Path, data: bytes) -> None:
    """Temp file, fsync, rename, fsync the folder."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def is_disk_full(exc: BaseException) -> bool:
    """An OSError ENOSPC/EDQUOT, or SQLite's SQLITE_FULL."""
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    return (isinstance(exc, sqlite3.OperationalError)
            and getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL)


def disk_full(what: str) -> DiskFull:
    """The error an upload gets when the data directory's disk is full."""
    return DiskFull(f"The server's data disk is full: {what} was not stored.",
                    "Retry later: the operator must free space in RAG_DATA_DIR (or delete "
                    "documents). Nothing of this request was kept.")
