"""A SQLite database shared by threads and processes: WAL, full fsync, immediate transactions."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from rag.errors import StoreUnreadable


class SqliteDatabase:
    """Base of each store's SQLite class (chunks, conversations, jobs); they set `SCHEMA`."""

    SCHEMA = ""
    # The schema's version, kept in SQLite's user_version: the code refuses a newer file (a
    # later release wrote it) rather than misread it. A new version adds its statements here.
    SCHEMA_VERSION = 1
    # (table, column, declaration) a later schema version added to a table that older files
    # have without it; added at open, before SCHEMA runs (its indexes may name them).
    ADDED_COLUMNS: tuple[tuple[str, str, str], ...] = ()
    dialect = "sqlite"

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.RLock()
        self._db: sqlite3.Connection | None = None

    def open(self) -> None:
        with self._lock:
            if self._db is not None:
                return
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, check_same_thread=False, timeout=60,
                                 isolation_level=None)
            try:
                with self.readable():
                    db.execute("PRAGMA busy_timeout=60000")
                    _enable_wal(db)
                    db.execute("PRAGMA synchronous=FULL")
                    found = self._check_version(db)
                    if found < self.SCHEMA_VERSION:
                        self._upgrade(db)
                    db.executescript(self.SCHEMA)
                    if found < self.SCHEMA_VERSION:  # written once: opening must not write
                        with contextlib.suppress(sqlite3.OperationalError):  # full: next time
                            db.execute(f"PRAGMA user_version={self.SCHEMA_VERSION}")
            except BaseException:
                db.close()
                raise
            self._db = db

    def _check_version(self, db: sqlite3.Connection) -> int:
        """The file's schema version; StoreUnreadable when it is newer than the code's."""
        found = int(db.execute("PRAGMA user_version").fetchone()[0])
        if found > self.SCHEMA_VERSION:
            raise StoreUnreadable(
                f"{self.path} has schema version {found}, newer than this version of the "
                f"service knows (up to {self.SCHEMA_VERSION}).",
                "Upgrade the service to the release that wrote it, or point RAG_DATA_DIR "
                "elsewhere.")
        return found

    def _upgrade(self, db: sqlite3.Connection) -> list[tuple[str, str]]:
        """Add the ADDED_COLUMNS an older file's existing tables lack, in one transaction
        (looked at again inside it: another process may have just done it); returns the
        (table, column) pairs added."""
        if not self._missing(db):
            return []
        db.execute("BEGIN IMMEDIATE")
        try:
            added = self._missing(db)
            declared = {(t, c): d for t, c, d in self.ADDED_COLUMNS}
            for table, column in added:
                db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declared[table, column]}")
            self._after_upgrade(db, added)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return added

    def _missing(self, db: sqlite3.Connection) -> list[tuple[str, str]]:
        """The ADDED_COLUMNS absent from tables that exist."""
        missing = []
        for table, column, _ in self.ADDED_COLUMNS:
            have = {r[1] for r in db.execute(f"PRAGMA table_info({table})").fetchall()}
            if have and column not in have:  # no columns: the table is not there yet
                missing.append((table, column))
        return missing

    def _after_upgrade(self, db: sqlite3.Connection, added: list[tuple[str, str]]) -> None:
        """Fill columns just added (inside the upgrade's transaction); nothing by default."""

    @contextlib.contextmanager
    def readable(self) -> Iterator[None]:
        """Turn SQLite's "not a database" or "malformed" into an error naming the file."""
        try:
            yield
        except sqlite3.DatabaseError as exc:
            if type(exc) is not sqlite3.DatabaseError:  # locked, full, I/O: not corruption
                raise
            raise StoreUnreadable(
                f"The database {self.path} is corrupt or truncated ({exc}).",
                f"Stop the service, then restore {self.path.name} from a backup, or move it "
                f"aside and upload the documents again (the service starts with an empty "
                f"store; `sqlite3 {self.path} .recover` may save what is left).",
            ) from exc

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            self.open()
        assert self._db is not None
        return self._db

    def _query(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self.db.execute(sql, args).fetchall()

    def execute(self, sql: str, args: Sequence[Any] = ()) -> int:
        """One statement in its own transaction; returns the rows changed."""
        with self._lock:
            return self.db.execute(sql, args).rowcount

    def serialize(self, db: Any, key: str) -> None:
        """Nothing to do: BEGIN IMMEDIATE already serializes the whole transaction."""

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Any]:
        """BEGIN IMMEDIATE (serializes writers across processes), COMMIT, or ROLLBACK."""
        with self._lock:
            db = self.db
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise


def _enable_wal(db: sqlite3.Connection, wait_s: float = 60.0) -> None:
    """Switch to WAL, retrying: processes opening a new database together get SQLITE_BUSY
    from the switch without the busy handler being consulted."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)
