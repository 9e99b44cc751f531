"""Where conversations, the answers given in them, and feedback on answers are kept.

Three backends behind one `ConversationStore`: SQLite in the data directory (embedded mode),
PostgreSQL (`RAG_DATABASE_URL`) and Redis (distributed mode, `RAG_REDIS_URL`); the SQL of the
first two lives once, in `SqlConversations`. `build_conversations` picks one. A conversation
lives `conversation_ttl_s` after its last turn. Once expired it is remembered a while longer (a
tombstone, `TOMBSTONE_TTLS` times the TTL), so that its next turn (which starts it afresh) can
be told apart from an id that never existed (refused as unknown). Feedback copies the
question, history and answer it rates, so it outlives the answer it was given on. The record
types are in rag.types; what the service does with them (threading an ask onto a
conversation, rating) is in rag.ask.conversations.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar

from rag.errors import NotReady
from rag.settings import Settings
from rag.stores.postgres import PostgresDatabase
from rag.stores.sql import SqlRecords
from rag.stores.sqlite import SqliteDatabase
from rag.types import AnswerRecord, Conversation, Feedback, Turn

TOMBSTONE_TTLS = 8
Lookup = Literal["live", "expired", "unknown"]


class ConversationStore(Protocol):
    """Where conversations, answers and feedback are kept."""

    ttl_s: int

    def open(self) -> None: ...

    def close(self) -> None: ...

    def lookup(self, conversation_id: str, owner: str = "") -> tuple[Lookup, Conversation | None]:
        """Whether the conversation is live (with its turns, oldest first), expired or unknown."""
        ...

    def owner(self, conversation_id: str) -> str | None:
        """Whose conversation it is (live, or expired and still remembered); None if unknown."""
        ...

    def save(self, record: AnswerRecord) -> None:
        """Keep an answer; with a conversation id, as that conversation's newest turn (an
        expired conversation starts afresh with it)."""
        ...

    def answer(self, answer_id: str) -> AnswerRecord | None: ...

    def recent(self, owner: str = "", limit: int = 50) -> list[Conversation]:
        """Live conversations of `owner`, most recently used first (turns left out)."""
        ...

    def delete(self, conversation_id: str, owner: str = "") -> bool: ...

    def add_feedback(self, feedback: Feedback) -> None: ...

    def feedback(self) -> list[Feedback]:
        """Every rating, oldest first."""
        ...


# --- JSON of the records ------------------------------------------------------------------


def _record_json(record: AnswerRecord) -> str:
    return json.dumps(asdict(record))


def _record(data: dict[str, Any]) -> AnswerRecord:
    return AnswerRecord(**{**data, "history": _turns(data.get("history", ())),
                           "documents": tuple(data.get("documents", ()))})


def _turns(items: Sequence[Any]) -> tuple[Turn, ...]:
    return tuple(Turn(str(t["question"]), str(t["answer"])) for t in items)


def _feedback(data: dict[str, Any]) -> Feedback:
    return Feedback(**{**data, "history": _turns(data.get("history", ())),
                       "documents": tuple(data.get("documents", ()))})


# --- SQLite and PostgreSQL ----------------------------------------------------------------

SCHEMA = """
CREATE TABLE IF NOT EXISTS conversations (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL DEFAULT '',
    title TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    expires_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS conversations_owner ON conversations(owner, updated_at);
CREATE TABLE IF NOT EXISTS answers (
    id TEXT PRIMARY KEY,
    conversation_id TEXT,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS answers_conversation ON answers(conversation_id, created_at);
CREATE TABLE IF NOT EXISTS feedback (
    id TEXT PRIMARY KEY,
    created_at REAL NOT NULL,
    record TEXT NOT NULL
);
"""


class SqlConversations(SqlRecords):
    """Conversations, answers and feedback in SQL tables: the queries SQLite and PostgreSQL
    both run. A backend class puts its database class first, which gives the primitives
    `stores.sql.SqlRecords` declares."""

    ttl_s: int

    def lookup(self, conversation_id: str, owner: str = "") -> tuple[Lookup, Conversation | None]:
        rows = self._query("SELECT id, title, created_at, updated_at, expires_at, owner "
                           "FROM conversations WHERE id = ? AND owner = ?",
                           (conversation_id, owner))
        if not rows:
            return "unknown", None
        if rows[0][4] <= time.time():
            return "expired", None
        turns = self._query("SELECT record FROM answers WHERE conversation_id = ? "
                            "ORDER BY created_at", (conversation_id,))
        return "live", _conversation(rows[0], tuple(_record(json.loads(r[0])) for r in turns))

    def owner(self, conversation_id: str) -> str | None:
        rows = self._query("SELECT owner FROM conversations WHERE id = ?", (conversation_id,))
        return str(rows[0][0]) if rows else None

    def save(self, record: AnswerRecord) -> None:
        now = time.time()
        record = replace(record, created_at=record.created_at or now)
        expires = now + self.ttl_s
        with self.transaction() as db:
            if record.conversation_id is not None:
                self._touch(db, record, now, expires)
            db.execute("INSERT INTO answers VALUES (?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE "
                       "SET conversation_id = excluded.conversation_id, created_at = "
                       "excluded.created_at, expires_at = excluded.expires_at, "
                       "record = excluded.record",
                       (record.id, record.conversation_id, record.created_at, expires,
                        _record_json(record)))
            # Forget what expired long ago (tombstones included).
            gone = now - TOMBSTONE_TTLS * self.ttl_s
            db.execute("DELETE FROM answers WHERE expires_at < ?", (now,))
            db.execute("DELETE FROM conversations WHERE expires_at < ?", (gone,))

    def _touch(self, db: Any, record: AnswerRecord, now: float, expires: float) -> None:
        """Make the conversation live until `expires`; an expired one loses its old turns."""
        row = db.execute("SELECT expires_at FROM conversations WHERE id = ?",
                         (record.conversation_id,)).fetchone()
        if row is not None and row[0] > now:
            db.execute("UPDATE conversations SET updated_at = ?, expires_at = ? WHERE id = ?",
                       (now, expires, record.conversation_id))
            # Its earlier turns live as long as it does.
            db.execute("UPDATE answers SET expires_at = ? WHERE conversation_id = ?",
                       (expires, record.conversation_id))
            return
        db.execute("DELETE FROM answers WHERE conversation_id = ?", (record.conversation_id,))
        db.execute("INSERT INTO conversations VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO "
                   "UPDATE SET owner = excluded.owner, title = excluded.title, created_at = "
                   "excluded.created_at, updated_at = excluded.updated_at, "
                   "expires_at = excluded.expires_at",
                   (record.conversation_id, record.owner, record.question[:200], now, now,
                    expires))

    def answer(self, answer_id: str) -> AnswerRecord | None:
        rows = self._query("SELECT record FROM answers WHERE id = ? AND expires_at > ?",
                           (answer_id, time.time()))
        return _record(json.loads(rows[0][0])) if rows else None

    def recent(self, owner: str = "", limit: int = 50) -> list[Conversation]:
        rows = self._query("SELECT id, title, created_at, updated_at, expires_at, owner "
                           "FROM conversations WHERE owner = ? AND expires_at > ? "
                           "ORDER BY updated_at DESC LIMIT ?", (owner, time.time(), limit))
        return [_conversation(row, ()) for row in rows]

    def delete(self, conversation_id: str, owner: str = "") -> bool:
        with self.transaction() as db:
            deleted = db.execute("DELETE FROM conversations WHERE id = ? AND owner = ?",
                                 (conversation_id, owner)).rowcount
            if deleted:
                db.execute("DELETE FROM answers WHERE conversation_id = ?", (conversation_id,))
        return bool(deleted)

    def add_feedback(self, feedback: Feedback) -> None:
        with self.transaction() as db:
            db.execute("INSERT INTO feedback VALUES (?, ?, ?)",
                       (feedback.id, feedback.created_at, json.dumps(asdict(feedback))))

    def feedback(self) -> list[Feedback]:
        rows = self._query("SELECT record FROM feedback ORDER BY created_at, id")
        return [_feedback(json.loads(r[0])) for r in rows]

def _conversation(row: Sequence[Any], turns: tuple[AnswerRecord, ...]) -> Conversation:
    return Conversation(id=row[0], title=row[1], turns=turns, created_at=row[2],
                        updated_at=row[3], expires_at=row[4], owner=row[5])


class SqliteConversations(SqliteDatabase, SqlConversations):
    """Conversations in `conversations.sqlite3` of the data directory."""

    SCHEMA = SCHEMA

    def __init__(self, path: Path, ttl_s: int) -> None:
        super().__init__(path)
        self.ttl_s = ttl_s


class PgConversations(PostgresDatabase, SqlConversations):
    """Conversations, answers and feedback in PostgreSQL (tables made by rag/stores/migrations)."""

    def __init__(self, url: str, ttl_s: int) -> None:
        super().__init__(url)
        self.ttl_s = ttl_s


# --- Redis --------------------------------------------------------------------------------

F = TypeVar("F", bound=Callable[..., Any])


def _reachable(method: F) -> F:
    """Redis down or unreachable: a NotReady that says so, not a stack trace."""

    @functools.wraps(method)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        import redis

        try:
            return method(*args, **kwargs)
        except (redis.RedisError, OSError) as exc:
            raise NotReady(f"Conversations are unavailable: Redis is unreachable ({exc}).",
                           "Retry once the service reports ready again, or send the earlier "
                           "turns as `history`.") from exc

    return wrapped  # type: ignore[return-value]


class RedisConversations:
    """Conversations in Redis: each conversation a hash and a list of answer ids, each answer a
    JSON string, all with the TTL; a tombstone key outlives them; feedback is kept without TTL."""

    prefix = "rag:conversation:"
    known = "rag:conversation-known:"
    index = "rag:conversations-of:"
    answers = "rag:turn:"
    ratings = "rag:feedback"

    def __init__(self, url: str, ttl_s: int) -> None:
        import redis

        # decode_responses: every reply is str (typed loosely by redis-py, hence Any).
        self._redis: Any = redis.Redis.from_url(url, decode_responses=True, socket_timeout=5.0,
                                           socket_connect_timeout=5.0)
        self.ttl_s = ttl_s

    def open(self) -> None:
        """Nothing to open: the connection is made on first use."""

    def close(self) -> None:
        self._redis.close()

    @_reachable
    def lookup(self, conversation_id: str, owner: str = "") -> tuple[Lookup, Conversation | None]:
        data = self._redis.hgetall(self.prefix + conversation_id)
        if not data or data.get("owner", "") != owner:
            known = self._redis.get(self.known + conversation_id)
            return ("expired" if known == owner else "unknown"), None
        ids = self._redis.lrange(self.prefix + conversation_id + ":turns", 0, -1)
        raw = self._redis.mget([self.answers + i for i in ids]) if ids else []
        turns = tuple(_record(json.loads(r)) for r in raw if r)
        return "live", _redis_conversation(conversation_id, data, turns)

    @_reachable
    def owner(self, conversation_id: str) -> str | None:
        live = self._redis.hget(self.prefix + conversation_id, "owner")
        known = self._redis.get(self.known + conversation_id)
        return str(live) if live is not None else None if known is None else str(known)

    @_reachable
    def save(self, record: AnswerRecord) -> None:
        now = time.time()
        record = replace(record, created_at=record.created_at or now)
        ttl = self.ttl_s
        pipe = self._redis.pipeline()
        pipe.set(self.answers + record.id, _record_json(record), ex=ttl)
        conversation = record.conversation_id
        if conversation is not None:
            key = self.prefix + conversation
            if self._redis.exists(key):  # its earlier turns live as long as it does
                for earlier in self._redis.lrange(key + ":turns", 0, -1):
                    pipe.expire(self.answers + earlier, ttl)
            else:
                pipe.delete(key + ":turns")
                pipe.hset(key, mapping={"title": record.question[:200], "owner": record.owner,
                                        "created_at": now})
            pipe.hset(key, mapping={"updated_at": now, "expires_at": now + ttl})
            pipe.rpush(key + ":turns", record.id)
            for name in (key, key + ":turns"):
                pipe.expire(name, ttl)
            pipe.set(self.known + conversation, record.owner, ex=TOMBSTONE_TTLS * ttl)
            pipe.zadd(self.index + record.owner, {conversation: now})
            pipe.zremrangebyscore(self.index + record.owner, "-inf", now - ttl)
        pipe.execute()

    @_reachable
    def answer(self, answer_id: str) -> AnswerRecord | None:
        raw = self._redis.get(self.answers + answer_id)
        return _record(json.loads(raw)) if raw else None

    @_reachable
    def recent(self, owner: str = "", limit: int = 50) -> list[Conversation]:
        now = time.time()
        ids = self._redis.zrevrangebyscore(self.index + owner, "+inf", now - self.ttl_s,
                                           start=0, num=limit)
        found = []
        for conversation_id in ids:
            data = self._redis.hgetall(self.prefix + conversation_id)
            if data:
                found.append(_redis_conversation(conversation_id, data, ()))
        return found

    @_reachable
    def delete(self, conversation_id: str, owner: str = "") -> bool:
        key = self.prefix + conversation_id
        data = self._redis.hgetall(key)
        if not data or data.get("owner", "") != owner:
            return False
        ids = self._redis.lrange(key + ":turns", 0, -1)
        self._redis.delete(key, key + ":turns", self.known + conversation_id,
                           *[self.answers + i for i in ids])
        self._redis.zrem(self.index + owner, conversation_id)
        return True

    @_reachable
    def add_feedback(self, feedback: Feedback) -> None:
        self._redis.rpush(self.ratings, json.dumps(asdict(feedback)))

    @_reachable
    def feedback(self) -> list[Feedback]:
        return [_feedback(json.loads(r)) for r in self._redis.lrange(self.ratings, 0, -1)]


def _redis_conversation(
    conversation_id: str, data: dict[str, str], turns: tuple[AnswerRecord, ...]
) -> Conversation:
    return Conversation(id=conversation_id, title=data.get("title", ""), turns=turns,
                        created_at=float(data.get("created_at", 0)),
                        updated_at=float(data.get("updated_at", 0)),
                        expires_at=float(data.get("expires_at", 0)),
                        owner=data.get("owner", ""))


def build_conversations(settings: Settings) -> ConversationStore:
    """PostgreSQL when `RAG_DATABASE_URL` is set, else Redis in distributed mode, else SQLite
    in the data directory: the one choice, for the service and for `rag eval export-feedback`."""
    ttl_s = settings.conversation_ttl_s
    if settings.database_url:
        return PgConversations(settings.database_url, ttl_s)
    if settings.redis_url:
        return RedisConversations(settings.redis_url, ttl_s)
    return SqliteConversations(settings.conversations_path, ttl_s)
