"""Response cache: Redis when configured, an in-process LRU otherwise.

A cached answer is keyed by everything that could change it (normalized question, filters,
index version, model, generation settings, prompt template version) and indexed by the
documents it cites, so deleting a document drops every answer that cited it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import unicodedata
from collections.abc import Mapping
from typing import Any, Protocol

from cachetools import LRUCache

from rag.types import Answer

log = logging.getLogger(__name__)


class ResponseCache(Protocol):
    """Answers kept by cache key, dropped with the documents they cite."""

    def get(self, key: str) -> Answer | None: ...

    def put(self, key: str, answer: Answer) -> None: ...

    def forget_documents(self, document_ids: list[str]) -> int: ...

    def clear(self) -> None: ...

    def ping(self) -> bool:
        """Whether the cache's backend answers (readiness checks it in distributed mode)."""
        ...


def normalize_question(question: str) -> str:
    text = unicodedata.normalize("NFKC", question).casefold()
    return " ".join(text.split()).rstrip(" ?!.")


def cache_key(question: str, parts: Mapping[str, Any]) -> str:
    """sha256 over the normalized question and every setting that shapes the answer."""
    payload = json.dumps({"q": normalize_question(question), **parts}, sort_keys=True,
                         default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


def _cited(answer: Answer) -> set[str]:
    return {c.document_id for c in answer.citations}


class MemoryCache:
    """LRU of answers in this process."""

    def __init__(self, size: int) -> None:
        self._items: LRUCache[str, Answer] = LRUCache(maxsize=max(size, 1))
        self._enabled = size > 0
        self._lock = threading.Lock()

    def get(self, key: str) -> Answer | None:
        with self._lock:
            return self._items.get(key)

    def put(self, key: str, answer: Answer) -> None:
        if self._enabled:
            with self._lock:
                self._items[key] = answer

    def forget_documents(self, document_ids: list[str]) -> int:
        wanted = set(document_ids)
        with self._lock:
            stale = [k for k, a in self._items.items() if _cited(a) & wanted]
            for k in stale:
                del self._items[k]
        return len(stale)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def ping(self) -> bool:
        """Always True: the cache is this process's memory."""
        return True


class RedisCache:
    """Answers in Redis with a TTL; if Redis is unreachable the cache is bypassed, logged."""

    prefix = "rag:answer:"
    by_doc = "rag:answers-of:"

    def __init__(self, url: str, ttl_s: int) -> None:
        import redis

        self._redis = redis.Redis.from_url(url, socket_timeout=1.0, socket_connect_timeout=1.0)
        self._errors: tuple[type[Exception], ...] = (redis.RedisError, OSError)
        self.ttl_s = ttl_s

    def get(self, key: str) -> Answer | None:
        try:
            raw = self._redis.get(self.prefix + key)
        except self._errors as exc:
            log.warning("response cache bypassed (redis get failed: %s)", exc)
            return None
        return Answer.from_dict(json.loads(raw)) if raw else None

    def put(self, key: str, answer: Answer) -> None:
        try:
            pipe = self._redis.pipeline()
            pipe.set(self.prefix + key, json.dumps(answer.to_dict()), ex=self.ttl_s)
            for doc in _cited(answer):
                pipe.sadd(self.by_doc + doc, key)
                pipe.expire(self.by_doc + doc, self.ttl_s)
            pipe.execute()
        except self._errors as exc:
            log.warning("response cache bypassed (redis put failed: %s)", exc)

    def forget_documents(self, document_ids: list[str]) -> int:
        removed = 0
        try:
            for doc in document_ids:
                members = self._redis.smembers(self.by_doc + doc)
                keys = [self.prefix + (k.decode() if isinstance(k, bytes) else k) for k in members]
                if keys:
                    removed += int(self._redis.delete(*keys))
                self._redis.delete(self.by_doc + doc)
        except self._errors as exc:
            log.warning("could not drop cached answers of %s: %s", document_ids, exc)
        return removed

    def clear(self) -> None:
        try:
            for key in self._redis.scan_iter(match="rag:answer*"):
                self._redis.delete(key)
        except self._errors as exc:
            log.warning("could not clear the response cache: %s", exc)

    def ping(self) -> bool:
        """Whether Redis answers a PING (False when it is unreachable)."""
        try:
            return bool(self._redis.ping())
        except self._errors:
            return False


def build_cache(redis_url: str | None, size: int, ttl_s: int) -> ResponseCache:
    """Redis when `RAG_REDIS_URL` is set (shared by every process), else an in-process LRU."""
    if redis_url:
        return RedisCache(redis_url, ttl_s)
    return MemoryCache(size)
