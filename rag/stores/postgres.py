"""The PostgreSQL database class the stores' PostgreSQL backends build on: a connection pool,
migrations at open.

The stores write portable SQL with `?` placeholders; this base turns them into psycopg's.
Alembic (rag/stores/migrations) evolves the schema: every process upgrades it at start, under an
advisory lock so that several starting together do it once, and refuses a schema newer than
its code. A lost connection becomes `StoreUnavailable` (retry when the server is back).
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import psycopg
import psycopg_pool
from sqlalchemy.engine import make_url

from rag.errors import StoreUnavailable

MIGRATIONS = Path(__file__).with_name("migrations")
MIGRATION_LOCK = 72_177_001  # pg_advisory_lock key: one process migrates at a time
CONNECT_TIMEOUT_S = 5
FAIL_FAST_S = 2.0  # after a failed connection, requests fail at once for this long
POOL_SIZE = 8  # connections per process (API threads, ingest threads, the log follower)


def hidden(url: str) -> str:
    """The URL with its password masked, for messages and logs."""
    return make_url(url).render_as_string(hide_password=True)


def driver_url(url: str) -> str:
    """The URL for SQLAlchemy with the psycopg 3 driver (Alembic runs on it)."""
    parsed = make_url(url)
    return parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)


def conninfo(url: str) -> str:
    """The URL as libpq takes it (no SQLAlchemy driver suffix)."""
    parsed = make_url(url)
    return parsed.set(drivername="postgresql").render_as_string(hide_password=False)


def unavailable(url: str, exc: BaseException) -> StoreUnavailable:
    return StoreUnavailable(
        f"PostgreSQL at {hidden(url)} does not answer ({str(exc).strip() or type(exc).__name__}).",
        "Check that the server runs and takes connections from this host, and that "
        "RAG_DATABASE_URL names the right host, port, database, user and password; "
        "retry when it is back.",
    )


@functools.lru_cache(maxsize=256)
def placeholders(sql: str) -> str:
    """`?` placeholders -> `%s`, and a literal `%` escaped (the stores' SQL has no other `?`)."""
    return sql.replace("%", "%%").replace("?", "%s")


class Transaction:
    """What a store's `transaction()` yields: execute and executemany, sqlite3-style."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn

    def execute(self, sql: str, args: Sequence[Any] = ()) -> psycopg.Cursor[Any]:
        return self.conn.execute(placeholders(sql), tuple(args))

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        with self.conn.cursor() as cur:
            cur.executemany(placeholders(sql), rows)


class PostgresDatabase:
    """Base of each store's PostgreSQL class; the same surface as `SqliteDatabase`.

    The stores of one process share one connection pool per URL.
    """

    dialect = "postgresql"

    def __init__(self, url: str) -> None:
        self.url = url
        self._pool: psycopg_pool.ConnectionPool | None = None

    def open(self) -> None:
        if self._pool is None:
            self._pool = _POOLS.acquire(self.url)

    def close(self) -> None:
        if self._pool is not None:
            self._pool = None
            _POOLS.release(self.url)

    @property
    def pool(self) -> psycopg_pool.ConnectionPool:
        if self._pool is None:
            self.open()
        assert self._pool is not None
        return self._pool

    @contextlib.contextmanager
    def readable(self) -> Iterator[None]:
        """A lost or refused connection -> StoreUnavailable naming the server."""
        try:
            yield
        except (psycopg.OperationalError, psycopg_pool.PoolTimeout) as exc:
            _FAILED_AT[self.url] = (time.monotonic(), str(exc))
            raise unavailable(self.url, exc) from exc

    @contextlib.contextmanager
    def connection(self) -> Iterator[psycopg.Connection[Any]]:
        failed = _FAILED_AT.get(self.url)
        if failed is not None and time.monotonic() - failed[0] < FAIL_FAST_S:
            # It just failed: answer at once rather than make every request wait for the pool.
            raise unavailable(self.url, RuntimeError(failed[1]))
        with self.readable(), self.pool.connection() as conn:
            yield conn
        _FAILED_AT.pop(self.url, None)

    def _query(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self.connection() as conn:
            return Transaction(conn).execute(sql, args).fetchall()

    def execute(self, sql: str, args: Sequence[Any] = ()) -> int:
        """One statement in its own transaction (autocommit); returns the rows changed."""
        with self.connection() as conn:
            return Transaction(conn).execute(sql, args).rowcount

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Transaction]:
        """BEGIN, COMMIT, or ROLLBACK when the block raises."""
        with self.connection() as conn, conn.transaction():
            yield Transaction(conn)

    def serialize(self, db: Any, key: str) -> None:
        """Hold a transaction-long lock on `key` (SQLite's BEGIN IMMEDIATE does it whole)."""
        db.execute("SELECT pg_advisory_xact_lock(hashtext(?))", (key,))


class _Pools:
    """One connection pool per URL in this process, opened (and the schema migrated) by the
    first store that needs it, closed when the last one closes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pools: dict[str, tuple[psycopg_pool.ConnectionPool, int]] = {}

    def acquire(self, url: str) -> psycopg_pool.ConnectionPool:
        with self._lock:
            if url in self._pools:
                pool, users = self._pools[url]
                self._pools[url] = (pool, users + 1)
                return pool
            migrate(url)
            pool = psycopg_pool.ConnectionPool(
                conninfo(url), min_size=1, max_size=POOL_SIZE, open=False,
                kwargs={"autocommit": True, "connect_timeout": CONNECT_TIMEOUT_S},
                check=psycopg_pool.ConnectionPool.check_connection,
                timeout=CONNECT_TIMEOUT_S)  # how long a request waits for a connection
            try:
                pool.open(wait=True, timeout=CONNECT_TIMEOUT_S * 2)
            except psycopg_pool.PoolTimeout as exc:
                pool.close()
                raise unavailable(url, exc) from exc
            self._pools[url] = (pool, 1)
            return pool

    def release(self, url: str) -> None:
        with self._lock:
            pool, users = self._pools.get(url, (None, 0))
            if pool is None:  # discarded already
                return
            if users > 1:
                self._pools[url] = (pool, users - 1)
                return
            del self._pools[url]
        pool.close()

    def discard(self, url: str) -> None:
        """Close the URL's pool whoever still uses it (a test dropping its database)."""
        with self._lock:
            entry = self._pools.pop(url, None)
        if entry is not None:
            entry[0].close()


_POOLS = _Pools()
_FAILED_AT: dict[str, tuple[float, str]] = {}  # url -> (time.monotonic(), error) of a failure


def discard_pool(url: str) -> None:
    _POOLS.discard(url)


@contextlib.contextmanager
def scratch_database(server_url: str, prefix: str = "rag_scratch") -> Iterator[str]:
    """A new, empty database on the server of `server_url` (for tests and benchmarks); its
    URL. Dropped afterwards, connections and all."""
    import uuid

    name = f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    try:
        admin = psycopg.connect(conninfo(server_url), autocommit=True,
                                connect_timeout=CONNECT_TIMEOUT_S)
    except psycopg.OperationalError as exc:
        raise unavailable(server_url, exc) from exc
    url = make_url(server_url).set(database=name).render_as_string(hide_password=False)
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield url
        finally:
            discard_pool(url)
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def migrate(url: str) -> None:
    """Upgrade the schema to this code's head; refuse a schema newer than the code."""
    from alembic import command
    from alembic.config import Config
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory
    from alembic.util.exc import CommandError
    from sqlalchemy import create_engine, exc, pool, text

    from rag.errors import StoreUnreadable

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    script = ScriptDirectory.from_config(config)
    engine = create_engine(driver_url(url), poolclass=pool.NullPool,
                           connect_args={"connect_timeout": CONNECT_TIMEOUT_S})
    try:
        with engine.begin() as conn:
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
            current = MigrationContext.configure(conn).get_current_revision()
            try:
                known = current is None or script.get_revision(current) is not None
            except CommandError:
                known = False
            if not known:
                raise StoreUnreadable(
                    f"The database at {hidden(url)} has schema revision {current}, newer than "
                    f"this version of the service knows (up to {script.get_current_head()}).",
                    "Upgrade the service to the release that wrote it, or point "
                    "RAG_DATABASE_URL at another database.")
            config.attributes["connection"] = conn
            command.upgrade(config, "head")
    except exc.OperationalError as error:
        raise unavailable(url, error.orig or error) from error
    finally:
        engine.dispose()
