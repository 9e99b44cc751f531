"""What the record stores' shared SQL needs of a database, declared once.

`ChunkStore`, `SqlConversations` and ingest's `JobStore` hold the queries both backends run;
a backend class puts its database class first (`SqliteDatabase`, `PostgresDatabase`), which
gives these primitives, then the record class: `SqliteChunkStore(SqliteDatabase, ChunkStore)`.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any


class SqlRecords(ABC):
    """Records kept in SQL tables, on a database given by the backend class."""

    @abstractmethod
    def open(self) -> None:
        """Connect (and create or migrate the schema)."""

    @abstractmethod
    def close(self) -> None:
        """Let go of the connection."""

    @abstractmethod
    def readable(self) -> contextlib.AbstractContextManager[None]:
        """Turn the database's own failures inside the block into a StoreError naming it."""

    @abstractmethod
    def transaction(self) -> contextlib.AbstractContextManager[Any]:
        """A transaction whose `execute` takes `?` placeholders; committed when the block ends."""

    @abstractmethod
    def serialize(self, db: Any, key: str) -> None:
        """Hold a lock on `key` until transaction `db` ends."""

    @abstractmethod
    def execute(self, sql: str, args: Sequence[Any] = ()) -> int:
        """One statement in its own transaction; returns the rows changed."""

    @abstractmethod
    def _query(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """The rows a query returns."""
