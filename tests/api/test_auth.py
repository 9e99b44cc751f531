"""Keys, scopes, open mode, rate limits and CORS, over the real engine and real Redis."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from pathlib import Path
from typing import Any

import pytest
from litestar import Litestar, get
from litestar.testing import TestClient

from api.app import create_app
from api.auth import require_scope
from api.errors import EXCEPTION_HANDLERS
from api.keys import load_keys
from rag.errors import ConfigError
from rag.service import RagService
from rag.settings import Settings
from tests.api.helpers import (
    ADMIN_KEY,
    ASK_KEY,
    INGEST_KEY,
    KEYS,
    private_redis,
    serving,
)
from tests.conftest import REDIS_URL

pytestmark = pytest.mark.slow

QUESTION = {"question": "Who is the beekeeper?"}
BAD = {"question": "   "}  # refused by the engine (422) after the key and the limit passed


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


# Keys and scopes


def test_keys_and_scopes_decide_401_403_200(corpus_service: RagService) -> None:
    with serving(corpus_service, api_keys=KEYS) as client:
        missing = client.post("/v1/ask", json=QUESTION)
        assert missing.status_code == 401
        assert missing.headers["www-authenticate"] == "Bearer"
        body = missing.json()
        assert body["error"] == "Unauthorized" and "No API key" in body["message"]
        assert "Authorization: Bearer" in body["hint"]

        wrong = client.post("/v1/ask", json=QUESTION, headers=bearer(ASK_KEY + "x"))
        assert wrong.status_code == 401 and "not valid" in wrong.json()["message"]
        assert client.post("/v1/ask", json=QUESTION, headers={"Authorization": ASK_KEY}
                           ).status_code == 401  # no Bearer scheme

        no_scope = client.post("/v1/ask", json=QUESTION, headers=bearer(INGEST_KEY))
        assert no_scope.status_code == 403
        assert no_scope.json()["error"] == "Forbidden" and "ask" in no_scope.json()["message"]

        by_bearer = client.post("/v1/ask", json=QUESTION, headers=bearer(ASK_KEY))
        assert by_bearer.status_code == 200, by_bearer.text
        assert "Miriam" in by_bearer.json()["citations"][0]["text"]
        by_header = client.post("/v1/ask", json=QUESTION, headers={"X-API-Key": ASK_KEY})
        assert by_header.status_code == 200
        assert client.post("/v1/ask", json=QUESTION, headers=bearer(ADMIN_KEY)).status_code == 200
        # Ops routes stay open for probes and scrapers.
        assert client.get("/health").status_code == 200
        assert client.get("/metrics").status_code == 200


def test_require_scope_guards_any_route() -> None:
    """The guard the document routes use: DELETE needs ingest or admin."""

    @get("/guarded", guards=[require_scope("ingest", "admin")], sync_to_thread=False)
    def guarded() -> str:
        return "ok"

    app = Litestar([guarded], exception_handlers=EXCEPTION_HANDLERS,
                   state={"settings": Settings(api_keys=KEYS)})  # type: ignore[arg-type]
    with TestClient(app) as client:
        assert client.get("/guarded", headers=bearer(INGEST_KEY)).status_code == 200
        assert client.get("/guarded", headers=bearer(ADMIN_KEY)).status_code == 200
        refused = client.get("/guarded", headers={"X-API-Key": ASK_KEY})
        assert refused.status_code == 403 and "ingest or admin" in refused.json()["message"]
        assert client.get("/guarded").status_code == 401


def test_every_key_is_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        calls.append((a, b))
        return real(a, b)

    keys = load_keys(Settings(api_keys=KEYS))
    monkeypatch.setattr(hmac, "compare_digest", spy)
    spec = keys.find(ASK_KEY)
    assert spec is not None and spec.scopes == frozenset({"ask"})
    # No early exit on a match, and equal-length digests rather than the raw keys.
    assert len(calls) == len(KEYS) and all(len(a) == len(b) == 32 for a, b in calls)
    assert keys.find(ASK_KEY[:-1]) is None and keys.find("") is None


def test_keys_from_the_key_file_guard_the_real_routes(
    corpus_service: RagService, tmp_path: Path
) -> None:
    """Hashed keys of RAG_API_KEYS_FILE, with a tenant: the same 401/403/200 as env keys."""
    entries = [{"sha256": hashlib.sha256(key.encode()).hexdigest(), "scopes": scopes,
                "tenant": "default", "groups": ["staff"]} for key, scopes in KEYS.items()]
    (tmp_path / "keys.json").write_text(json.dumps(entries))
    with serving(corpus_service, api_keys_file=tmp_path / "keys.json",
                 view_secret="v" * 40) as client:
        assert client.post("/v1/ask", json=QUESTION).status_code == 401
        assert client.post("/v1/ask", json=QUESTION, headers=bearer(INGEST_KEY)
                           ).status_code == 403
        answered = client.post("/v1/ask", json=QUESTION, headers=bearer(ASK_KEY))
        assert answered.status_code == 200 and answered.json()["citations"]
    create_app(Settings(host="0.0.0.0", api_keys_file=tmp_path / "keys.json",
                 view_secret="v" * 40))  # keys are on


# Open mode


def test_open_mode_on_localhost_answers_without_a_key_and_says_so(
    corpus_service: RagService, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="api.auth"), serving(corpus_service) as client:
        response = client.post("/v1/ask", json=QUESTION)
        assert response.status_code == 200 and response.json()["citations"]
    assert any("No API keys configured" in r.getMessage() and "open" in r.getMessage()
               for r in caplog.records)


@pytest.mark.parametrize("host", ["0.0.0.0", "10.1.2.3", "rag.example.com"])
def test_refuses_to_start_open_beyond_localhost(host: str) -> None:
    with pytest.raises(ConfigError, match="refuses to run open") as info:
        create_app(Settings(host=host))
    assert "RAG_API_KEYS" in info.value.hint
    create_app(Settings(host=host, api_keys=KEYS))  # with keys it starts


def test_widget_key_must_be_ask_only() -> None:
    with pytest.raises(ConfigError, match="RAG_WIDGET_KEY"):
        create_app(Settings(api_keys=KEYS, widget_key=ADMIN_KEY))
    with pytest.raises(ConfigError, match="RAG_WIDGET_KEY"):
        create_app(Settings(api_keys=KEYS, widget_key="not-a-configured-key"))
    create_app(Settings(api_keys=KEYS, widget_key=ASK_KEY))
    operator = {"operator-ask-key-1234": {"scopes": ["ask"], "tenant": "*"}}
    with pytest.raises(ConfigError, match="operator"):  # it would read every tenant
        create_app(Settings(api_keys=operator, widget_key="operator-ask-key-1234"))


# Rate limits


def test_rate_limit_per_key_in_memory(corpus_service: RagService) -> None:
    with serving(corpus_service, api_keys=KEYS, rate_limit_per_minute=3) as client:
        for _ in range(3):
            assert client.post("/v1/ask", json=BAD, headers=bearer(ASK_KEY)).status_code == 422
        limited = client.post("/v1/ask", json=BAD, headers=bearer(ASK_KEY))
        assert limited.status_code == 429
        assert 1 <= int(limited.headers["retry-after"]) <= 60
        assert limited.json()["error"] == "RateLimited" and "Retry-After" in limited.json()["hint"]
        # Another key has its own budget; probes are not limited.
        assert client.post("/v1/ask", json=BAD, headers=bearer(ADMIN_KEY)).status_code == 422
        assert all(client.get("/health").status_code == 200 for _ in range(5))


def test_rate_limit_is_shared_through_redis(
    corpus_service: RagService, redis_client: Any
) -> None:
    """Two API processes (two apps here) on one Redis share a key's budget."""
    limits = {"api_keys": KEYS, "rate_limit_per_minute": 2, "redis_url": REDIS_URL}
    with serving(corpus_service, **limits) as first, serving(corpus_service, **limits) as second:
        assert first.post("/v1/ask", json=BAD, headers=bearer(ASK_KEY)).status_code == 422
        assert second.post("/v1/ask", json=BAD, headers=bearer(ASK_KEY)).status_code == 422
        limited = first.post("/v1/ask", json=BAD, headers=bearer(ASK_KEY))
        assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1
        assert second.post("/v1/ask", json=BAD, headers=bearer(ADMIN_KEY)).status_code == 422
    stored = [k.decode() for k in redis_client.keys("rag:ratelimit*")]
    assert len(stored) == 2 and not any(ASK_KEY in k for k in stored)  # keys are not stored


def test_rate_limit_keeps_working_when_redis_goes_away(corpus_service: RagService) -> None:
    with private_redis() as redis:
        limits = {"api_keys": KEYS, "rate_limit_per_minute": 2, "redis_url": redis.url}
        with serving(corpus_service, **limits) as client:
            assert client.post("/v1/ask", json=BAD, headers=bearer(ASK_KEY)).status_code == 422
            redis.stop()
            # Falls back to memory: no 500s, and still limited.
            assert client.post("/v1/ask", json=BAD, headers=bearer(ASK_KEY)).status_code == 422
            assert client.post("/v1/ask", json=BAD, headers=bearer(ASK_KEY)).status_code == 422
            assert client.post("/v1/ask", json=BAD, headers=bearer(ASK_KEY)).status_code == 429
            redis.start()  # let the app shut down with its Redis there


# CORS


def test_cors_allows_the_configured_origin_and_no_other(corpus_service: RagService) -> None:
    allowed, other = "http://widget.example:8080", "http://evil.example"
    preflight = {"Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization, content-type"}
    with serving(corpus_service, api_keys=KEYS, cors_origins=[allowed],
                 rate_limit_per_minute=1) as client:
        ok = client.options("/v1/ask", headers={"Origin": allowed, **preflight})
        assert ok.status_code in (200, 204)
        assert ok.headers["access-control-allow-origin"] == allowed
        assert "authorization" in ok.headers["access-control-allow-headers"].lower()
        refused = client.options("/v1/ask", headers={"Origin": other, **preflight})
        assert refused.headers.get("access-control-allow-origin") != other

        # Error responses carry CORS headers too, so the widget can read them; the
        # preflights above did not use up the one request allowed per minute.
        first = client.post("/v1/ask", json=BAD, headers={"Origin": allowed, **bearer(ASK_KEY)})
        assert first.status_code == 422
        assert first.headers["access-control-allow-origin"] == allowed
        limited = client.post("/v1/ask", json=BAD, headers={"Origin": allowed, **bearer(ASK_KEY)})
        assert limited.status_code == 429
        assert "retry-after" in limited.headers["access-control-expose-headers"].lower()
        unknown = client.post("/v1/ask", json=BAD, headers={"Origin": other})
        assert "access-control-allow-origin" not in unknown.headers


def test_no_cors_without_origins(corpus_service: RagService) -> None:
    with serving(corpus_service) as client:
        response = client.get("/health", headers={"Origin": "http://elsewhere.example"})
        assert "access-control-allow-origin" not in response.headers


# Each scope reaches only its routes


ANY_VALID = {"ask": {ASK_KEY, ADMIN_KEY}, "ingest": {INGEST_KEY, ADMIN_KEY}}
# Requests that stop right after the guard (an error or a no-op), so nothing changes.
SCOPED_ROUTES: dict[tuple[str, str], tuple[str, dict[str, Any]]] = {
    ("POST", "/v1/ask"): ("ask", {"json": BAD}),
    ("POST", "/v1/documents"): ("ingest", {}),
    ("GET", "/v1/documents"): ("ingest", {}),
    ("GET", "/v1/documents/{document_id}"): ("ingest", {}),
    ("DELETE", "/v1/documents/{document_id}"): ("ingest", {}),
    ("GET", "/v1/jobs/{job_id}"): ("ingest", {}),
    ("POST", "/v1/jobs/{job_id}/cancel"): ("ingest", {}),
}
OPEN_ROUTES = ["/health", "/ready", "/metrics", "/widget.js", "/", "/schema/openapi.json"]


def concrete(path: str) -> str:
    return (path.replace("{document_id}", "0" * 64).replace("{job_id}", "no-such-job")
            .replace("{page}", "1"))


def test_each_scope_reaches_only_its_routes(corpus_service: RagService) -> None:
    with serving(corpus_service, api_keys=KEYS) as client:
        document = client.get("/schema/openapi.json").json()
        v1 = {(m.upper(), p) for p, ops in document["paths"].items() for m in ops
              if p.startswith("/v1/")}
        for method, path in sorted(v1):
            url = concrete(path)
            # Every /v1 route needs a key, whatever it is (a new route without a guard fails).
            assert client.request(method, url, json={}).status_code == 401, (method, path)
            assert client.request(method, url, json={}, headers=bearer("not-a-key")
                                  ).status_code == 401, (method, path)
            if (method, path) not in SCOPED_ROUTES:
                continue
            scope, kwargs = SCOPED_ROUTES[method, path]
            for key in KEYS:
                status = client.request(method, url, headers=bearer(key), **kwargs).status_code
                if key in ANY_VALID[scope]:
                    assert status not in (401, 403), (method, path, KEYS[key], status)
                else:
                    assert status == 403, (method, path, KEYS[key], status)
        assert SCOPED_ROUTES.keys() <= v1  # the table names real routes
        for path in OPEN_ROUTES:  # probes, scrapers and the widget need no key
            assert client.get(path).status_code == 200, path


# Keys stay secret


def test_a_key_never_appears_in_logs_or_metrics(
    corpus_service: RagService, caplog: pytest.LogCaptureFixture
) -> None:
    """Valid, wrong-scope and invalid keys, by both headers, over real HTTP with uvicorn's
    access log on: no log record and no metric carries one."""
    import httpx

    from tests.api.helpers import app_settings, live_server

    wrong = "sk-not-configured-0d9e8c7b6a"
    app = create_app(app_settings(corpus_service, api_keys=KEYS, rate_limit_per_minute=1000),
                     service=corpus_service)
    with caplog.at_level(logging.DEBUG), live_server(app, log_level="debug") as base, \
            httpx.Client(base_url=base, timeout=120) as client:
        # Litestar configures the root logger at start-up; listen to it again from here on.
        logging.getLogger().addHandler(caplog.handler)
        for key in [*KEYS, wrong]:
            for headers in (bearer(key), {"X-API-Key": key}):
                client.post("/v1/ask", json=QUESTION, headers=headers)
                client.post("/v1/ask", json=BAD, headers=headers)
                client.get("/v1/documents", headers=headers)
                client.get(f"/v1/jobs/{key}", headers=headers)  # even as a path parameter
        metrics = client.get("/metrics").text
    logging.getLogger().removeHandler(caplog.handler)
    logged = "\n".join(f"{r.name} {r.getMessage()} {r.args!r}" for r in caplog.records)
    assert "uvicorn.access" in logged and "/v1/ask" in logged  # the access log was on
    for key in [*KEYS, wrong]:
        assert key not in metrics
        assert key not in logged.replace(f"/v1/jobs/{key}", "/v1/jobs/<path>"), key
    assert "rag_http_requests_total" in metrics and "/v1/jobs/{job_id" in metrics


# Open mode stays on this machine


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.20"])
def test_rag_serve_refuses_an_open_non_local_bind(host: str, tmp_path: Any) -> None:
    """`rag serve` itself: it exits with the reason before loading anything or listening."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("RAG_")}
    env.update({"RAG_DATA_DIR": str(tmp_path / "data"), "COLUMNS": "200"})
    done = subprocess.run([sys.executable, "-m", "rag.cli", "serve", "--host", host],
                          env=env, text=True, capture_output=True, timeout=120)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "refuses to run open" in done.stdout and "RAG_API_KEYS" in done.stdout
    assert not (tmp_path / "data").exists()  # nothing was loaded or written


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_open_mode_is_allowed_on_loopback(host: str) -> None:
    create_app(Settings(host=host))


# Rate limits are per key


def test_rate_limits_are_per_key_across_routes_and_not_drained_by_bad_keys(
    corpus_service: RagService,
) -> None:
    with serving(corpus_service, api_keys=KEYS, rate_limit_per_minute=2) as client:
        # One key's budget covers all its routes.
        assert client.get("/v1/documents", headers=bearer(INGEST_KEY)).status_code == 200
        assert client.get("/v1/jobs/x", headers=bearer(INGEST_KEY)).status_code == 404
        assert client.get("/v1/documents", headers=bearer(INGEST_KEY)).status_code == 429
        # Sending it by the other header is the same key, the same budget.
        assert client.get("/v1/documents", headers={"X-API-Key": INGEST_KEY}).status_code == 429
        # Invalid keys count against the client address, not against any key.
        for n in range(2):
            assert client.post("/v1/ask", json=BAD, headers=bearer(f"guess-{n}")
                               ).status_code == 401
        assert client.post("/v1/ask", json=BAD, headers=bearer("guess-3")).status_code == 429
        assert client.post("/v1/ask", json=BAD).status_code == 429  # no key: the same address
        # The other keys still have their whole budget.
        for key in (ASK_KEY, ADMIN_KEY):
            assert client.post("/v1/ask", json=BAD, headers=bearer(key)).status_code == 422
            assert client.post("/v1/ask", json=BAD, headers=bearer(key)).status_code == 422
            assert client.post("/v1/ask", json=BAD, headers=bearer(key)).status_code == 429
