"""Reads around answers honour access: source views, page images and files of documents a key
may not read are unknown to it; conversations and answers are their key's; /metrics counts the
refusals by kind only; a view token opens its one document without a key."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from litestar import Litestar
from litestar.testing import TestClient

from api.auth import key_id
from api.view_links import ViewLinks
from rag.ask.conversations import Conversations
from rag.errors import NotFound
from rag.service import RagService
from rag.settings import Settings
from rag.stores.conversations import (
    ConversationStore,
    PgConversations,
    RedisConversations,
    SqliteConversations,
)
from rag.types import AnswerRecord, Document, new_id
from tests.api.helpers import ADMIN_KEY, ASK_KEY, INGEST_KEY, KEYS, ingest_corpus, serving
from tests.conftest import REDIS_URL
from tests.ingest.helpers import make_pdf

pytestmark = pytest.mark.slow

ACME_ASK = "acme-ask-key-3f9a1c7e55"
ACME_INGEST = "acme-ingest-key-8b2d4e6f10"
ACME_LEGAL = "acme-legal-key-c4d5e6f7a8"
ACME_ADMIN = "acme-admin-key-0a1b2c3d4e"
OPERATOR = "operator-key-9e8d7c6b5a"
TENANT_KEYS: dict[str, Any] = {
    **KEYS,
    ACME_ASK: {"scopes": ["ask"], "tenant": "acme"},
    ACME_INGEST: {"scopes": ["ingest"], "tenant": "acme"},
    ACME_LEGAL: {"scopes": ["ask"], "tenant": "acme", "groups": ["legal"]},
    ACME_ADMIN: {"scopes": ["admin"], "tenant": "acme"},
    OPERATOR: {"scopes": ["admin"], "tenant": "*"},
}
BEES = "Who is the beekeeper of the Larkspur apiary?"
VAULT = "The Harrowgate vault of the Acme company opens with code 5521 on Mondays."
BRIEF = "The Acme legal brief is due to the Oxley court on the ninth of March."
FAKE = "f" * 64
VIEW = "/v1/documents/{}/view?start=0&end=12"
PAGE = "/v1/documents/{}/pages/1"
FILE = "/v1/documents/{}/file"
REFUSED_LINE = re.compile(r'^rag_access_refused_total\{kind="([a-z]+)"\} ([0-9.e+]+)$', re.M)


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def access_service(tmp_path_factory: pytest.TempPathFactory, embedder: Any, generator: Any
                   ) -> Iterator[RagService]:
    """The packaged models over the API corpus (tenant `default`), an `acme` PDF and an `acme`
    note for the `legal` group only."""
    root = tmp_path_factory.mktemp("access")
    service = RagService(Settings(data_dir=root / "data", max_new_tokens=16, top_k=3),
                         embedder=embedder, generator=generator)
    service.load()
    ingest_corpus(service, root / "corpus")
    vault = service.documents.ingest_file(make_pdf(root / "vault.pdf", [VAULT]))
    service.store.put_document(replace(vault, tenant="acme"))
    (root / "brief.txt").write_text(BRIEF)
    brief = service.documents.ingest_file(root / "brief.txt")
    service.store.put_document(replace(brief, tenant="acme", access=("legal",)))
    yield service
    service.store.close()


@pytest.fixture(scope="module")
def client(access_service: RagService) -> Iterator[TestClient[Litestar]]:
    with serving(access_service, api_keys=TENANT_KEYS) as client:
        yield client


def named(service: RagService, filename: str) -> Document:
    docs, _ = service.documents.page(limit=100)
    return next(d for d in docs if d.filename == filename)


def refused_counts(client: TestClient[Litestar]) -> dict[str, float]:
    """rag_access_refused_total by kind, as /metrics shows it now."""
    text = client.get("/metrics").text
    return {kind: float(value) for kind, value in REFUSED_LINE.findall(text)}


def unknown_alike(client: TestClient[Litestar], route: str, doc_id: str, key: str) -> bool:
    """Whether `key` gets `route` of `doc_id` exactly as it gets that of an unknown id."""
    refused = client.get(route.format(doc_id), headers=auth(key))
    unknown = client.get(route.format(FAKE), headers=auth(key))
    return (refused.status_code == unknown.status_code == 404
            and refused.text.replace(doc_id, FAKE) == unknown.text)


def test_metrics_count_refused_reads_by_kind_only(
    client: TestClient[Litestar], access_service: RagService
) -> None:
    """Works with `default`-tenant keys alone: another tenant's view, page and file; another
    key's conversation and answer. Each refusal raises its kind's counter, naming no document
    and no key."""
    vault = named(access_service, "vault.pdf")
    asked = client.post("/v1/ask", json={"question": BEES}, headers=auth(ASK_KEY)).json()
    before = refused_counts(client)
    assert set(before) >= {"document", "job", "view", "cache", "conversation", "feedback"}
    assert unknown_alike(client, VIEW, vault.id, ASK_KEY)
    assert unknown_alike(client, PAGE, vault.id, ADMIN_KEY)
    assert unknown_alike(client, FILE, vault.id, INGEST_KEY)
    other = auth(ADMIN_KEY)
    assert client.get(f"/v1/conversations/{asked['conversation']}",
                      headers=other).status_code == 404
    assert client.post("/v1/feedback", json={"answer_id": asked["answer_id"], "rating": "up"},
                       headers=other).status_code == 404
    after = refused_counts(client)
    rises = {kind: after[kind] - before.get(kind, 0) for kind in after}
    assert rises["view"] == 3 and rises["conversation"] == 1 and rises["feedback"] == 1
    metrics = client.get("/metrics").text
    for secret in (vault.id, asked["answer_id"], asked["conversation"], ASK_KEY,
                   key_id(ASK_KEY), key_id(ADMIN_KEY)):
        assert secret not in metrics


def test_a_token_opens_its_document_without_a_key_and_no_other(
    client: TestClient[Litestar], access_service: RagService
) -> None:
    """A token minted for the `acme` PDF (as an acme key's answer carries it) opens its view and
    pages with no key; on another document it is refused."""
    links = ViewLinks(client.app.state["settings"])
    vault, bees = named(access_service, "vault.pdf"), named(access_service, "bees.txt")
    shown = client.get(links.view_url(vault.id, 0, 12, 1))
    assert shown.status_code == 200 and "opens with code 5521" in shown.text
    assert client.get(links.page_url(vault.id, 1)).status_code == 200
    token = parse_qs(urlsplit(links.view_url(vault.id, 0, 12, None)).query)["token"][0]
    for other in (f"{VIEW.format(bees.id)}&token={token}", f"{PAGE.format(FAKE)}?token={token}"):
        assert client.get(other).status_code == 403


def test_tenant_keys_read_their_tenant_and_groups_only(
    client: TestClient[Litestar], access_service: RagService
) -> None:
    """Needs keys with tenants and groups (RAG_API_KEYS objects): an acme key opens acme's
    documents and not `default`'s; a group's document opens for that group, the tenant's admin
    and the operator only."""
    vault, brief = named(access_service, "vault.pdf"), named(access_service, "brief.txt")
    bees = named(access_service, "bees.txt")
    for route in (VIEW, PAGE):
        assert client.get(route.format(vault.id), headers=auth(ACME_ASK)).status_code == 200
    assert client.get(FILE.format(vault.id), headers=auth(ACME_INGEST)).status_code == 200
    assert unknown_alike(client, VIEW, bees.id, ACME_ASK)
    assert unknown_alike(client, FILE, bees.id, ACME_INGEST)

    assert unknown_alike(client, VIEW, brief.id, ACME_ASK)  # not in `legal`
    for key in (ACME_LEGAL, ACME_ADMIN, OPERATOR):
        shown = client.get(VIEW.format(brief.id), headers=auth(key))
        assert shown.status_code == 200, (key, shown.text)
    assert unknown_alike(client, VIEW, brief.id, ADMIN_KEY)  # another tenant's admin
    assert client.get(VIEW.format(bees.id), headers=auth(OPERATOR)).status_code == 200


def test_keys_from_the_key_file_alone_guard_the_view(
    access_service: RagService, tmp_path: Path
) -> None:
    """With RAG_API_KEYS_FILE and no RAG_API_KEYS the service is not open: a view needs a key
    or a token, and the key reads its tenant only."""
    entry = {"sha256": hashlib.sha256(ACME_ASK.encode()).hexdigest(), "scopes": ["ask"],
             "tenant": "acme"}
    (tmp_path / "keys.json").write_text(json.dumps([entry]))
    vault, bees = named(access_service, "vault.pdf"), named(access_service, "bees.txt")
    with serving(access_service, api_keys_file=tmp_path / "keys.json",
                 view_secret="v" * 40) as client:
        assert client.get(VIEW.format(vault.id)).status_code == 401
        assert client.get(VIEW.format(vault.id), headers=auth(ACME_ASK)).status_code == 200
        assert unknown_alike(client, VIEW, bees.id, ACME_ASK)
        links = ViewLinks(client.app.state["settings"])
        assert client.get(links.view_url(bees.id, 0, 12, None)).status_code == 200


# --- the owner checks of the stores, on every backend -------------------------------------


def conversation_store(kind: str, tmp_path: Path, request: pytest.FixtureRequest
                       ) -> ConversationStore:
    if kind == "sqlite":
        store: ConversationStore = SqliteConversations(tmp_path / "c.sqlite3", 60)
    elif kind == "postgres":
        store = PgConversations(request.getfixturevalue("pg_url"), 60)
    else:
        request.getfixturevalue("redis_client")  # a clean database
        store = RedisConversations(REDIS_URL, 60)
    store.open()
    return store


@pytest.mark.parametrize("kind", ["sqlite", "postgres", "redis"])
def test_stores_name_a_conversations_owner_and_rate_only_for_it(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    store = conversation_store(kind, tmp_path, request)
    try:
        record = AnswerRecord(new_id("ans"), "What is X?", "X [1].", "conv_a", owner="key-a")
        store.save(record)
        assert store.owner("conv_a") == "key-a" and store.owner("conv_nope") is None
        conversations = Conversations(store, max_turns=4)
        with pytest.raises(NotFound):
            conversations.rate(record.id, "up", owner="key-b")
        with pytest.raises(NotFound):
            conversations.get("conv_a", "key-b")
        assert conversations.rate(record.id, "down", owner="key-a").rating == "down"
        assert [f.answer_id for f in store.feedback()] == [record.id]
        store.delete("conv_a", "key-a")
        assert store.owner("conv_a") is None
    finally:
        store.close()
