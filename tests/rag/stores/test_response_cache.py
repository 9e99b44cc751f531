"""Response cache: one contract test both implementations pass, plus Redis outage."""

from __future__ import annotations

import logging

import pytest

from rag.stores.response_cache import (
    MemoryCache,
    RedisCache,
    ResponseCache,
    cache_key,
    normalize_question,
)
from rag.types import Answer, Citation
from tests.conftest import REDIS_URL


def answer(text: str, *docs: str) -> Answer:
    cites = tuple(Citation(i + 1, d, f"{d}.txt", i, "t", 0, 1, None, 0.5)
                  for i, d in enumerate(docs))
    return Answer(question="q", text=text, citations=cites)


@pytest.fixture(params=["memory", "redis"])
def cache(request: pytest.FixtureRequest) -> ResponseCache:
    if request.param == "memory":
        return MemoryCache(16)
    request.getfixturevalue("redis_client")
    return RedisCache(REDIS_URL, ttl_s=60)


def test_contract(cache: ResponseCache) -> None:
    assert cache.get("k1") is None
    cache.put("k1", answer("one", "docA"))
    cache.put("k2", answer("two", "docB"))
    cache.put("k3", answer("three", "docA", "docB"))
    got = cache.get("k1")
    assert got is not None and got.text == "one" and got.citations[0].document_id == "docA"
    assert cache.forget_documents(["docA"]) == 2
    assert cache.get("k1") is None and cache.get("k3") is None
    assert cache.get("k2") is not None
    cache.clear()
    assert cache.get("k2") is None


def test_key_normalizes_question_and_covers_settings() -> None:
    parts = {"index": 3, "model": "m", "top_k": 5}
    assert cache_key("What is  RAG?", parts) == cache_key("what is rag", parts)
    assert cache_key("What is RAG?", parts) != cache_key("What is RAG?", {**parts, "index": 4})
    assert normalize_question("  Ｈello   World?? ") == "hello world"


def test_memory_cache_is_lru() -> None:
    cache = MemoryCache(2)
    for k in ("a", "b", "c"):
        cache.put(k, answer(k))
    assert cache.get("a") is None and cache.get("c") is not None


def test_unreachable_redis_is_bypassed(caplog: pytest.LogCaptureFixture) -> None:
    cache = RedisCache("redis://127.0.0.1:1/0", ttl_s=60)  # nothing listens on port 1
    with caplog.at_level(logging.WARNING):
        cache.put("k", answer("x", "d"))
        assert cache.get("k") is None
        assert cache.forget_documents(["d"]) == 0
    assert "bypassed" in caplog.text


def test_an_answer_cached_by_another_version_reads_back() -> None:
    """A rolling upgrade shares the Redis cache: an older entry lacks the newer timings, a newer
    one carries figures this process does not know; both read back."""
    from dataclasses import asdict

    stored = asdict(answer("one", "docA"))
    older = {**stored, "timings": {"total_ms": 12.0}}
    newer = {**stored, "timings": {**stored["timings"], "total_ms": 9.0, "later_ms": 3.0}}
    assert Answer.from_dict(older).timings.total_ms == 12.0
    assert Answer.from_dict(older).timings.first_sentence_ms == 0.0
    assert Answer.from_dict(newer).timings.total_ms == 9.0
