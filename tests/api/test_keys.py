"""API keys with tenants and groups: both forms of RAG_API_KEYS, the key file of hashes, the
errors that name an entry's position (never its key), the caller a request gets, `rag keys new`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from litestar import Litestar, Request, get
from litestar.datastructures import State
from litestar.stores.memory import MemoryStore
from litestar.testing import TestClient
from typer.testing import CliRunner

from api.app import create_app
from api.auth import (
    OPEN_CALLER,
    caller_of,
    check_open_access,
    key_id,
    keys_on,
    known_groups,
    require_scope,
)
from api.errors import EXCEPTION_HANDLERS
from api.keys import KeySpec, digest, load_keys
from api.limits import STORE, rate_limit_middleware
from api.view_links import ViewLinks
from rag.access import Reader
from rag.cli import app as rag_app
from rag.errors import ConfigError
from rag.settings import Settings

ACME_KEY = "acme-legal-key-2b7f0c9e41d8"
ACME_ADMIN = "acme-admin-key-93c1e0a7f5b2"
PLAIN_KEY = "plain-default-key-5d2e8b1a7c"
OPERATOR_KEY = "operator-key-0f4e7d2c9b1a"
ENV_KEYS: dict[str, Any] = {
    PLAIN_KEY: ["ask"],
    ACME_KEY: {"scopes": ["ask", "ingest"], "tenant": "acme", "groups": ["legal"]},
    ACME_ADMIN: {"scopes": ["admin"], "tenant": "acme", "name": "acme's admin"},
}
FILE_KEY = "file-key-beta-6a0d3f8e2c71"


def file_entry(key: str, **fields: Any) -> dict[str, Any]:
    return {"sha256": hashlib.sha256(key.encode()).hexdigest(), "scopes": ["ask"], **fields}


def key_file(tmp_path: Path, entries: Any, name: str = "keys.json") -> Path:
    path = tmp_path / name
    path.write_text(entries if isinstance(entries, str) else json.dumps(entries))
    return path


@pytest.fixture
def keys_path(tmp_path: Path) -> Path:
    return key_file(tmp_path, [
        file_entry(FILE_KEY, tenant="beta", groups=["finance", "hr"], name="beta's reader"),
        file_entry(OPERATOR_KEY, scopes=["admin"], tenant="*"),
    ])


# Both forms, and the file of hashes


def test_both_forms_of_rag_api_keys() -> None:
    keys = load_keys(Settings(api_keys=ENV_KEYS))
    assert len(keys) == 3 and keys.tenants() == ["acme", "default"]
    assert keys.find(PLAIN_KEY) == KeySpec(frozenset({"ask"}))
    assert keys.find(ACME_KEY) == KeySpec(frozenset({"ask", "ingest"}), "acme",
                                          frozenset({"legal"}))
    admin = keys.find(ACME_ADMIN)
    assert admin is not None and admin.name == "acme's admin" and admin.groups == frozenset()
    assert admin.reader == Reader("acme", frozenset(), all_groups=True)
    assert keys.find(ACME_KEY + "x") is None and keys.find("") is None
    assert not any(key in repr(keys) for key in ENV_KEYS)  # the table keeps hashes only


def test_the_key_file_keeps_hashes_and_adds_to_the_environment_keys(keys_path: Path) -> None:
    keys = load_keys(Settings(api_keys=ENV_KEYS, api_keys_file=keys_path))
    assert len(keys) == 5 and keys.tenants() == ["*", "acme", "beta", "default"]
    beta = keys.find(FILE_KEY)
    assert beta == KeySpec(frozenset({"ask"}), "beta", frozenset({"finance", "hr"}),
                           "beta's reader")
    operator = keys.find(OPERATOR_KEY)
    assert operator is not None and operator.reader.everything
    # Groups are a tenant's own (an operator key has none: it reads every group).
    assert keys.groups_of("beta") == {"finance", "hr"}
    assert keys.groups_of("acme") == {"legal"}
    assert keys.groups_of("nobody") == set()
    only_file = load_keys(Settings(api_keys_file=keys_path))
    assert len(only_file) == 2 and only_file.find(PLAIN_KEY) is None


def test_a_large_table_compares_every_digest_and_finds_each_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    many = {f"key-{n:04d}-abcdefghijkl": {"scopes": ["ask"], "tenant": f"t{n}"}
            for n in range(300)}
    keys = load_keys(Settings(api_keys=many))
    calls: list[tuple[Any, Any]] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    for n in (0, 149, 299):
        spec = keys.find(f"key-{n:04d}-abcdefghijkl")
        assert spec is not None and spec.tenant == f"t{n}"
    assert keys.find("key-0300-abcdefghijkl") is None
    # No early exit on a match, and equal-length digests rather than the keys.
    assert len(calls) == 4 * 300 and all(len(a) == len(b) == 32 for a, b in calls)


# Malformed keys name their position, never the key


SECRET = "do-not-print-this-key-7e1f"
BAD_ENV = [
    ([], '"scopes" must be a non-empty list'),
    (["ask", "read"], '(got a list of 2 items)'),
    ({"scopes": ["ask"], "tenant": 7}, '"tenant" must be a name of letters, digits, ".", "_" '
                                       'or "-" (up to 64), or "*" for the operator (got a number)'),
    ({"scopes": ["ask"], "tenant": "a b"}, '"tenant" must be a name'),
    ({"scopes": ["ask"], "groups": "legal"}, '"groups" must be a list'),
    ({"scopes": ["ask"], "groups": ["legal", "no/slash"]}, '"groups" must be a list'),
    ({"scopes": ["ask"], "tenants": "acme"}, "1 unknown field(s)"),
    ({"tenant": "acme"}, '"scopes" is missing'),
    ({"scopes": ["admin"], "tenant": "*", "groups": ["legal"]}, 'give it no "groups"'),
    ({"scopes": ["ask"], "name": "x" * 101}, '"name" must be a printable label'),
    ("ask", "must be a list of scopes or an object, not a string"),
    ({"scopes": [SECRET]}, "(got a list of 1 item)"),  # a value repeating the key, unshown
]


@pytest.mark.parametrize(("value", "expected"), BAD_ENV)
def test_a_malformed_environment_key_names_its_position(value: Any, expected: str) -> None:
    settings = Settings(api_keys={PLAIN_KEY: ["ask"], ACME_KEY: ["ingest"], SECRET: value})
    with pytest.raises(ConfigError) as info:
        load_keys(settings)
    text = f"{info.value.message} {info.value.hint}"
    assert info.value.message.startswith("RAG_API_KEYS entry 3"), text
    assert expected in text
    assert SECRET not in text and PLAIN_KEY not in text and ACME_KEY not in text


@pytest.mark.parametrize("key", ["", " padded-key-1234567890 "])
def test_an_empty_or_padded_key_is_refused(key: str) -> None:
    with pytest.raises(ConfigError, match="^RAG_API_KEYS entry 2: the key") as info:
        load_keys(Settings(api_keys={PLAIN_KEY: ["ask"], key: ["ask"]}))
    assert key.strip() == "" or key.strip() not in str(info.value)


def test_rag_api_keys_that_is_no_object_is_refused_without_showing_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for value in (f'["{SECRET}"]', f'"{SECRET}"'):
        monkeypatch.setenv("RAG_API_KEYS", value)
        with pytest.raises(ConfigError, match="must be a JSON object") as info:
            Settings()
        assert SECRET not in str(info.value)


BAD_FILE: list[tuple[Any, str]] = [
    ('[{"sha256": "ab",\n  "scopes": ["ask"]', "is not valid JSON: Expecting ',' delimiter "
                                                "at line 2, column 20"),
    ({"sha256": "0" * 64, "scopes": ["ask"]}, "must hold a JSON list of entries, not an object"),
    ([], "holds no keys"),
    ([file_entry(FILE_KEY), SECRET], "entry 2 must be an object, not a string"),
    ([file_entry(FILE_KEY), {"key": SECRET, "scopes": ["ask"]}], "entry 2 holds a plain key"),
    ([file_entry(FILE_KEY), {"sha256": SECRET, "scopes": ["ask"]}],
     'entry 2: "sha256" must be the key\'s SHA-256 as 64 hex digits'),
    ([file_entry(FILE_KEY), file_entry(SECRET, tenant="")], 'entry 2: "tenant" must be'),
    ([file_entry(FILE_KEY), file_entry(SECRET, scope=["ask"])], 'entry 2: 1 unknown field(s)'),
    ([file_entry(FILE_KEY), file_entry(FILE_KEY, tenant="x")],
     "entry 2: the same key as RAG_API_KEYS_FILE"),
    ([file_entry(SECRET)], "entry 1: the same key as RAG_API_KEYS entry 1"),
]


@pytest.mark.parametrize(("content", "expected"), BAD_FILE)
def test_a_malformed_key_file_names_the_file_and_the_position(
    tmp_path: Path, content: Any, expected: str
) -> None:
    path = key_file(tmp_path, content)
    with pytest.raises(ConfigError) as info:
        load_keys(Settings(api_keys={SECRET: ["ask"]}, api_keys_file=path))
    text = f"{info.value.message} {info.value.hint}"
    assert info.value.message.startswith(f"RAG_API_KEYS_FILE ({path})"), text
    assert expected in text, text
    assert SECRET not in text


def test_an_unreadable_key_file_says_why(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot be read: No such file or directory"):
        load_keys(Settings(api_keys_file=tmp_path / "missing.json"))
    assert Settings(api_keys_file="").api_keys_file is None


# Start-up


def test_start_up_refuses_malformed_keys_and_logs_no_key(
    tmp_path: Path, keys_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bad = {SECRET: {"scopes": ["ask"], "tenant": 7}}
    with pytest.raises(ConfigError, match="^RAG_API_KEYS entry 1:") as info:
        create_app(Settings(api_keys=bad))
    assert SECRET not in str(info.value)
    with pytest.raises(ConfigError, match="entry 1 holds a plain key"):
        create_app(Settings(api_keys_file=key_file(tmp_path, [{"key": SECRET}], "plain.json")))
    with caplog.at_level(logging.INFO, logger="api.auth"):
        keys = check_open_access(Settings(host="0.0.0.0", api_keys={"short-key": ["ask"]},
                                          api_keys_file=keys_path))
    assert len(keys) == 3  # file keys alone are keys: it may listen beyond localhost
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "API keys: 3 configured (tenants: *, beta, default)" in logged
    assert "entries 1 are short keys" in logged
    for key in ("short-key", FILE_KEY, OPERATOR_KEY):
        assert key not in logged and digest(key).hex()[:16] not in logged


def test_file_keys_alone_need_their_own_view_secret(keys_path: Path) -> None:
    with pytest.raises(ConfigError, match="RAG_API_KEYS_FILE alone") as info:
        check_open_access(Settings(api_keys_file=keys_path))
    assert "RAG_VIEW_SECRET" in info.value.hint
    assert check_open_access(Settings(api_keys_file=keys_path, view_secret="s" * 40))


def test_rag_serve_stops_on_a_malformed_key_naming_its_position(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAG_")}
    env.update({"RAG_DATA_DIR": str(tmp_path / "data"), "COLUMNS": "200",
                "RAG_API_KEYS": json.dumps({PLAIN_KEY: ["ask"], SECRET: ["ask", "write"]})})
    done = subprocess.run([sys.executable, "-m", "rag.cli", "serve"], env=env, text=True,
                          capture_output=True, timeout=120)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "RAG_API_KEYS entry 2" in done.stdout and "(got a list of 2 items)" in done.stdout
    assert SECRET not in done.stdout + done.stderr
    assert not (tmp_path / "data").exists()


# The caller of a request


@get("/v1/whoami", guards=[require_scope("ask", "ingest")], sync_to_thread=False)
def whoami(request: Request[Any, Any, Any]) -> dict[str, Any]:
    caller = caller_of(request)
    return {"owner": caller.owner, "tenant": caller.tenant, "upload": caller.upload_tenant,
            "operator": caller.operator, "scopes": sorted(caller.scopes),
            "reader": caller.reader.fingerprint(), "on": keys_on(request),
            "known": sorted(known_groups(request, caller.upload_tenant))}


def tiny_app(settings: Settings, **state: Any) -> Litestar:
    return Litestar([whoami], exception_handlers=EXCEPTION_HANDLERS,
                    state=State({"settings": settings, **state}),
                    middleware=rate_limit_middleware(settings), stores={STORE: MemoryStore()})


def test_the_caller_has_its_keys_tenant_groups_and_scopes(keys_path: Path) -> None:
    settings = Settings(api_keys=ENV_KEYS, api_keys_file=keys_path)
    with TestClient(tiny_app(settings, keys=check_open_access(settings))) as client:
        def who(key: str) -> dict[str, Any]:
            response = client.get("/v1/whoami", headers={"X-API-Key": key})
            assert response.status_code == 200, response.text
            body: dict[str, Any] = response.json()
            return body

        acme = who(ACME_KEY)
        assert acme == {"owner": key_id(ACME_KEY), "tenant": "acme", "upload": "acme",
                        "operator": False, "scopes": ["ask", "ingest"], "reader": "acme|legal",
                        "on": True, "known": ["legal"]}
        assert who(ACME_ADMIN)["reader"] == "acme|*"  # an admin reads all its tenant's groups
        assert who(PLAIN_KEY)["reader"] == "default|" and who(PLAIN_KEY)["tenant"] == "default"
        beta = who(FILE_KEY)  # a key from the file: its owner id is that of the same key
        assert beta["owner"] == key_id(FILE_KEY) and beta["reader"] == "beta|finance,hr"
        operator = who(OPERATOR_KEY)
        assert operator["operator"] and operator["tenant"] == "*"
        assert operator["upload"] == "default" and operator["reader"] == "*"
        assert client.get("/v1/whoami", headers={"X-API-Key": "no-such-key"}).status_code == 401
        assert client.get("/v1/whoami").status_code == 401


def test_open_mode_callers_read_everything() -> None:
    with TestClient(tiny_app(Settings())) as client:  # no table in the state: made from settings
        body = client.get("/v1/whoami").json()
    assert body["operator"] and not body["on"] and body["reader"] == "*"
    assert body["scopes"] == sorted(OPEN_CALLER.scopes)


def test_file_keys_get_their_own_rate_limit_bucket(keys_path: Path) -> None:
    settings = Settings(api_keys_file=keys_path, rate_limit_per_minute=1)
    with TestClient(tiny_app(settings)) as client:
        assert client.get("/v1/whoami", headers={"X-API-Key": FILE_KEY}).status_code == 200
        assert client.get("/v1/whoami", headers={"X-API-Key": FILE_KEY}).status_code == 429
        assert client.get("/v1/whoami", headers={"X-API-Key": OPERATOR_KEY}).status_code == 200


# View links


def test_view_links_agree_for_the_same_keys_only(keys_path: Path) -> None:
    first = ViewLinks(Settings(api_keys=ENV_KEYS, api_keys_file=keys_path))
    token = first.sign("doc", 2_000_000_000)
    ViewLinks(Settings(api_keys=dict(reversed(ENV_KEYS.items())), api_keys_file=keys_path)
              ).check(token, "doc")  # another process, the same keys in another order
    moved = {**ENV_KEYS, ACME_KEY: {"scopes": ["ask"], "tenant": "other", "groups": ["legal"]}}
    for other in (Settings(api_keys=moved, api_keys_file=keys_path),
                  Settings(api_keys=ENV_KEYS), Settings(api_keys_file=keys_path)):
        with pytest.raises(Exception, match="not valid"):
            ViewLinks(other).check(token, "doc")
    only_file = ViewLinks(Settings(api_keys_file=keys_path))
    assert only_file.signed and only_file.token("doc") is not None
    assert not ViewLinks(Settings()).signed


# rag keys new


def test_rag_keys_new_prints_a_key_whose_entry_loads_back(tmp_path: Path) -> None:
    made = CliRunner().invoke(rag_app, ["keys", "new", "--scopes", "ask,ingest", "--tenant",
                                        "acme", "--groups", "legal,hr", "--name", "laptop",
                                        "--json"])
    assert made.exit_code == 0, made.output
    printed = json.loads(made.output)
    key, entry = printed["key"], printed["entry"]
    assert len(key) >= 40 and key not in json.dumps(entry)
    plain = CliRunner().invoke(rag_app, ["keys", "new"])
    assert plain.exit_code == 0 and "RAG_API_KEYS_FILE" in plain.output
    other_key, other_entry = plain.output.split("\n")[1], json.loads(plain.output.split("\n")[4])
    path = key_file(tmp_path, [entry, other_entry])
    keys = load_keys(Settings(api_keys_file=path))
    assert keys.find(key) == KeySpec(frozenset({"ask", "ingest"}), "acme",
                                     frozenset({"legal", "hr"}), "laptop")
    assert keys.find(other_key) == KeySpec(frozenset({"ask"}))


def test_rag_keys_new_refuses_a_bad_option() -> None:
    refused = CliRunner().invoke(rag_app, ["keys", "new", "--scopes", "ask,write"])
    assert refused.exit_code == 2 and '"scopes" must be' in refused.output
