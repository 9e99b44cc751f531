"""Documents and jobs per tenant over HTTP: an upload belongs to its key's tenant, its `access`
groups narrow it within the tenant, and a key that may not read a document or its job is
answered as if it did not exist (counted, never named)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from litestar import Litestar
from litestar.testing import TestClient

from api.app import create_app
from rag.access import REFUSED, document_id
from rag.service import RagService
from rag.settings import Settings
from rag.stores.uploads import sha256_file
from tests.api.helpers import wait_ready
from tests.ingest.helpers import wait_for

pytestmark = pytest.mark.slow

Client = TestClient[Litestar]

ACME_INGEST = "acme-ingest-4d1f7a9c2e"  # tenant acme, no groups
ACME_LEGAL = "acme-legal-9b3e5c7a1f"  # tenant acme, group legal
ACME_ADMIN = "acme-admin-2c8d6e4b0a"
GLOBEX = "globex-ingest-7e1a3c5b9d"  # tenant globex
OPERATOR = "operator-5f2b8d1c7e"  # tenant *: every tenant
KEYS: dict[str, Any] = {
    ACME_INGEST: {"scopes": ["ingest"], "tenant": "acme"},
    ACME_LEGAL: {"scopes": ["ask", "ingest"], "tenant": "acme", "groups": ["legal"]},
    ACME_ADMIN: {"scopes": ["admin"], "tenant": "acme"},
    GLOBEX: {"scopes": ["ingest"], "tenant": "globex"},
    OPERATOR: {"scopes": ["admin"], "tenant": "*"},
}


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory, embedder: object, generator: object,
            models_dir: Path) -> Iterator[RagService]:
    root = tmp_path_factory.mktemp("tenant-documents")
    settings = Settings(data_dir=root / "data", converted_models_dir=models_dir,
                        rate_limit_per_minute=0, max_new_tokens=8)
    made = RagService(settings, embedder=embedder, generator=generator)  # type: ignore[arg-type]
    yield made
    made.close()


def app_over(service: RagService, **overrides: Any) -> Iterator[Client]:
    settings = Settings(**{"data_dir": service.settings.data_dir, "rate_limit_per_minute": 0,
                           "converted_models_dir": service.settings.converted_models_dir,
                           **overrides})
    with TestClient(create_app(settings, service=service)) as client:
        wait_ready(client.get, 120)
        yield client


@pytest.fixture(scope="module")
def client(service: RagService) -> Iterator[Client]:
    yield from app_over(service, api_keys=KEYS)


def upload(client: Client, key: str, name: str, text: str, **form: str) -> Any:
    return client.post("/v1/documents", headers=auth(key), data=form,
                       files=[("file", (name, text.encode()))])


def accepted(client: Client, key: str, name: str, text: str, **form: str) -> dict[str, Any]:
    """The upload's answer, once its job has finished."""
    response = upload(client, key, name, text, **form)
    assert response.status_code == 202, response.text
    body: dict[str, Any] = response.json()
    job = body["documents"][0]["job_id"]
    wait_for(lambda: client.get(f"/v1/jobs/{job}", headers=auth(OPERATOR)).json()["state"]
             in ("done", "failed", "cancelled"), 120, 0.1, "the job")
    return body


def listed(client: Client, key: str, **params: Any) -> set[str]:
    response = client.get("/v1/documents", headers=auth(key), params=params)
    assert response.status_code == 200, response.text
    page = response.json()
    assert page["total"] == len(page["items"])
    return {item["id"] for item in page["items"]}


def missing(client: Client, key: str, path: str, real: str) -> None:
    """GET `path` answers 404 exactly as it does for an id that never existed."""
    got = client.get(path, headers=auth(key))
    absent = client.get(path.replace(real, "0" * 64), headers=auth(key))
    assert got.status_code == absent.status_code == 404, got.text
    assert got.json() == json.loads(absent.text.replace("0" * 64, real))


def test_another_tenant_neither_lists_reads_deletes_nor_follows_the_job(client: Client) -> None:
    body = accepted(client, ACME_LEGAL, "harbour.txt",
                    "The Quillby harbour master opens the locks at dawn.", collection="ports")
    doc, job = body["documents"][0]["document_id"], body["documents"][0]["job_id"]
    assert body["warnings"] == []
    before = REFUSED.snapshot()
    assert doc not in listed(client, GLOBEX) and doc not in listed(client, GLOBEX,
                                                                   collection="ports")
    missing(client, GLOBEX, f"/v1/documents/{doc}", doc)
    missing(client, GLOBEX, f"/v1/jobs/{job}", job)
    cancel = client.post(f"/v1/jobs/{job}/cancel", headers=auth(GLOBEX))
    assert cancel.status_code == 404 and job in cancel.json()["message"]
    gone = client.delete(f"/v1/documents/{doc}", headers=auth(GLOBEX))
    assert gone.status_code == 200 and gone.json() == {"id": doc, "deleted": False}
    after = REFUSED.snapshot()
    assert after.get("document", 0) - before.get("document", 0) == 2  # the GET and the DELETE
    assert after.get("job", 0) - before.get("job", 0) == 2
    # still there, for its own tenant and for the operator
    mine = client.get(f"/v1/documents/{doc}", headers=auth(ACME_INGEST)).json()
    assert (mine["tenant"], mine["access"], mine["state"]) == ("acme", [], "indexed")
    assert doc in listed(client, OPERATOR) and doc in listed(client, ACME_ADMIN,
                                                              collection="ports")
    assert client.get(f"/v1/jobs/{job}", headers=auth(ACME_INGEST)).json()["state"] == "done"


def test_a_group_restricted_document_is_for_the_group_and_the_admins(client: Client) -> None:
    body = accepted(client, ACME_LEGAL, "settlement.txt",
                    "The settlement code is ZEBRA-7741.", access='["legal"]')
    doc, job = body["documents"][0]["document_id"], body["documents"][0]["job_id"]
    assert body["warnings"] == []
    for key in (ACME_LEGAL, ACME_ADMIN, OPERATOR):
        assert doc in listed(client, key), key
        seen = client.get(f"/v1/documents/{doc}", headers=auth(key)).json()
        assert seen["access"] == ["legal"] and [v["id"] for v in seen["versions"]] == [doc]
        assert client.get(f"/v1/jobs/{job}", headers=auth(key)).status_code == 200
    assert doc not in listed(client, ACME_INGEST)  # same tenant, not in the group
    missing(client, ACME_INGEST, f"/v1/documents/{doc}", doc)
    missing(client, ACME_INGEST, f"/v1/jobs/{job}", job)
    refused = client.delete(f"/v1/documents/{doc}", headers=auth(ACME_INGEST))
    assert refused.json()["deleted"] is False
    assert client.get(f"/v1/documents/{doc}", headers=auth(ACME_ADMIN)).status_code == 200
    # the tenant's admin may delete it; another tenant's admin could not have
    assert client.delete(f"/v1/documents/{doc}", headers=auth(ACME_ADMIN)).json()["deleted"]
    assert doc not in listed(client, OPERATOR)


def test_an_ingest_key_deletes_what_it_may_read_in_its_tenant(client: Client) -> None:
    body = accepted(client, ACME_LEGAL, "ferry.txt", "The Millbrook ferry leaves hourly.")
    doc = body["documents"][0]["document_id"]
    assert client.delete(f"/v1/documents/{doc}", headers=auth(ACME_INGEST)).json()["deleted"]
    assert client.get(f"/v1/documents/{doc}", headers=auth(ACME_ADMIN)).status_code == 404


def test_the_same_bytes_in_two_tenants_are_two_documents(client: Client, tmp_path: Path) -> None:
    text = "The Aldgate night train departs from platform 9 at 23:15."
    ours = upload(client, ACME_LEGAL, "train.txt", text).json()["documents"][0]
    theirs = upload(client, GLOBEX, "train.txt", text).json()["documents"][0]
    assert ours["document_id"] != theirs["document_id"]
    assert not ours["duplicate"] and not theirs["duplicate"]
    assert theirs["version"] == 1  # its name is its own tenant's
    (tmp_path / "train.txt").write_text(text)
    digest = sha256_file(tmp_path / "train.txt")
    assert ours["document_id"] == document_id(digest, "acme")
    assert theirs["document_id"] == document_id(digest, "globex")
    again = upload(client, ACME_INGEST, "train copy.txt", text).json()
    assert again["documents"][0]["document_id"] == ours["document_id"]
    assert again["documents"][0]["duplicate"] and again["warnings"] == []
    # the same bytes for a group are the group's own document, apart from the tenant's
    other = upload(client, ACME_LEGAL, "train.txt", text, access='["legal"]').json()
    item = other["documents"][0]
    assert not item["duplicate"] and item["version"] == 1  # a name is versioned per readers
    assert item["document_id"] == document_id(digest, "acme", ("legal",)) != ours["document_id"]
    kept = client.get(f"/v1/documents/{ours['document_id']}", headers=auth(ACME_INGEST))
    assert kept.status_code == 200 and kept.json()["access"] == []
    # a key outside the group cannot send files for it: not to replace its documents, nor to
    # learn whether it holds certain bytes
    blind = upload(client, ACME_INGEST, "train.txt", text, access='["legal"]')
    assert blind.status_code == 403 and "none of the access groups" in blind.json()["message"]
    # new bytes under the name are the next version in that tenant only
    newer = upload(client, ACME_LEGAL, "train.txt", text + " It reaches the coast at dawn.")
    assert newer.json()["documents"][0]["version"] == 2


@pytest.mark.parametrize("access", [
    "[legal]", '"legal"', '{"legal": 1}', "[1]", '["legal", null]', '["-legal"]', '["a b"]',
    json.dumps(["x" * 65]), json.dumps([f"g{i}" for i in range(33)]),
])
def test_a_bad_access_field_is_refused(client: Client, access: str) -> None:
    before = listed(client, OPERATOR)
    response = upload(client, ACME_LEGAL, "refused.txt", "Never stored.", access=access)
    assert response.status_code == 422, response.text
    assert "access" in response.json()["message"] and response.json()["hint"]
    assert listed(client, OPERATOR) == before


def test_thirty_two_groups_are_accepted(client: Client) -> None:
    groups = [f"g{i}" for i in range(32)]
    response = upload(client, ACME_ADMIN, "many.txt", "Many groups may read this.",
                      access=json.dumps(groups[::-1]))
    assert response.status_code == 202, response.text
    doc = response.json()["documents"][0]["document_id"]
    seen = client.get(f"/v1/documents/{doc}", headers=auth(ACME_ADMIN)).json()
    assert seen["access"] == sorted(groups)


def test_a_group_no_key_holds_is_accepted_with_a_warning(client: Client) -> None:
    body = upload(client, ACME_LEGAL, "report.txt", "The Q3 budget is 4 million.",
                  access='["legal", "finance"]').json()
    assert body["warnings"] == [
        'Group "finance" in access is held by no API key of tenant "acme"; only its admin '
        "keys can read report.txt."]
    # `legal` is acme's, not globex's: a globex key holds no group to give a file to
    theirs = upload(client, GLOBEX, "memo.txt", "The memo is short.", access='["legal"]')
    assert theirs.status_code == 403, theirs.text
    # acme's admin gives files to any group, a group no key holds with a warning
    admin = upload(client, ACME_ADMIN, "plan.txt", "The plan is long.", access='["board"]')
    assert admin.status_code == 202 and admin.json()["warnings"][0].startswith(
        'Group "board" in access is held by no API key of tenant "acme"')


def test_open_mode_gives_no_group_warning(tmp_path: Path, embedder: object, generator: object,
                                          models_dir: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", converted_models_dir=models_dir,
                        rate_limit_per_minute=0)
    service = RagService(settings, embedder=embedder, generator=generator)  # type: ignore[arg-type]
    try:
        for client in app_over(service):
            text = "Open mode reads everything."
            body = upload(client, OPERATOR, "open.txt", text, access='["nobody"]').json()
            assert body["warnings"] == []
            doc = body["documents"][0]["document_id"]
            (tmp_path / "open.txt").write_text(text)
            digest = sha256_file(tmp_path / "open.txt")  # the default tenant's, with its groups
            assert doc == document_id(digest, "default", ("nobody",)) != digest
            seen = client.get(f"/v1/documents/{doc}").json()
            assert (seen["tenant"], seen["access"]) == ("default", ["nobody"])
    finally:
        service.close()
