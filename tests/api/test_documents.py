"""Documents and jobs over HTTP in embedded mode (`rag serve` alone: no Redis, ingestion in
the API process), and every kind of hostile upload."""

from __future__ import annotations

import asyncio
import io
import json
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from litestar import Litestar
from litestar.testing import TestClient

from api.app import create_app
from ingest.jobs import job_store
from rag.service import RagService
from rag.settings import Settings
from tests.ingest.helpers import (
    check_exactly_once,
    long_text,
    make_bomb,
    make_broken_docx,
    make_mixed,
    wait_for,
)

pytestmark = pytest.mark.slow

Client = TestClient[Litestar]


def embedded_settings(data_dir: Path, models_dir: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {"data_dir": data_dir, "converted_models_dir": models_dir,
                              "rate_limit_per_minute": 0, "max_new_tokens": 24}
    return Settings(**{**values, **overrides})


@pytest.fixture()
def open_client(tmp_path: Path, embedder: object, generator: object, models_dir: Path
                ) -> Iterator[Callable[..., Client]]:
    """Start embedded apps over fresh data dirs (or a given one); all stopped at the end."""
    stack: list[Client] = []

    def start(data_dir: Path | None = None, **overrides: Any) -> Client:
        settings = embedded_settings(data_dir or tmp_path / f"data{len(stack)}", models_dir,
                                     **overrides)
        service = RagService(settings, embedder=embedder, generator=generator)  # type: ignore[arg-type]
        client = TestClient(create_app(settings, service=service))
        client.__enter__()
        stack.append(client)
        wait_for(lambda: client.get("/ready").status_code == 200, 120, 0.1, "the API")
        return client

    yield start
    for client in reversed(stack):
        stop(client)


def stop(client: Client) -> None:
    """Run the app's shutdown (once): the job queue stops, running jobs are interrupted."""
    if hasattr(client, "blocking_portal"):  # still running
        client.__exit__(None, None, None)


@pytest.fixture()
def client(open_client: Callable[..., Client]) -> Client:
    return open_client()


def service_of(client: Client) -> RagService:
    return client.app.state["service"]  # type: ignore[no-any-return]


def upload(client: Client, files: list[tuple[str, bytes]], **data: str) -> Any:
    return client.post("/v1/documents", files=[("file", f) for f in files], data=data)


def accepted(client: Client, files: list[tuple[str, bytes]], **data: str) -> list[dict[str, Any]]:
    response = upload(client, files, **data)
    assert response.status_code == 202, response.text
    return response.json()["documents"]  # type: ignore[no-any-return]


def wait_jobs(client: Client, job_ids: list[str], timeout_s: float = 300) -> list[dict[str, Any]]:
    def finished() -> list[dict[str, Any]] | None:
        jobs = [client.get(f"/v1/jobs/{j}").json() for j in job_ids]
        return jobs if all(j["state"] in ("done", "failed", "cancelled") for j in jobs) else None

    return wait_for(finished, timeout_s, 0.1, "jobs to finish")  # type: ignore[no-any-return]


def ask(client: Client, question: str) -> dict[str, Any]:
    response = client.post("/v1/ask", json={"question": question})
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def nothing_stored(client: Client) -> None:
    service = service_of(client)
    assert service.store.list_documents()[1] == 0
    assert job_store(service.settings).unfinished() == []
    uploads = service.settings.uploads_dir
    kept = [p for p in uploads.rglob("*") if p.is_file()] if uploads.exists() else []
    assert kept == []


# The happy paths


def test_upload_mixed_formats_poll_and_ask_with_citations(client: Client, tmp_path: Path) -> None:
    files = make_mixed(tmp_path / "mixed")
    uploaded = accepted(client, [(n, p.read_bytes()) for n, (p, _, _) in files.items()],
                        collection="handbook", metadata=json.dumps({"team": "ops"}))
    jobs = wait_jobs(client, [u["job_id"] for u in uploaded])
    assert [j["state"] for j in jobs] == ["done"] * len(files), jobs
    for job in jobs:
        assert job["stage"] == "index" and job["progress"]["fraction"] == 1.0
        assert set(job["timings_s"]) == {"parse", "chunk", "embed", "index"}
        assert job["progress"]["done"] == job["progress"]["total"] > 0
    for name in ("museum.html", "fleet.docx", "observatory.pdf"):
        _, question, fact = files[name]
        top = ask(client, question)["citations"][0]
        assert top["filename"] == name and fact in top["text"]
    doc = client.get(f"/v1/documents/{uploaded[0]['document_id']}").json()
    assert doc["collection"] == "handbook" and doc["metadata"] == {"team": "ops"}
    assert doc["job_id"] == uploaded[0]["job_id"] and doc["state"] == "indexed"
    pdf = client.get(f"/v1/documents/{uploaded[4]['document_id']}").json()
    assert (pdf["filename"], pdf["content_type"], pdf["pages"]) == (
        "observatory.pdf", "application/pdf", 2)
    check_exactly_once(service_of(client))


def test_same_bytes_are_one_document(client: Client) -> None:
    text = b"The Millbrook ferry leaves the north pier every 40 minutes."
    first, second = accepted(client, [("ferry.txt", text), ("ferry copy.txt", text)])
    assert first["document_id"] == second["document_id"] and first["job_id"] == second["job_id"]
    assert not first["duplicate"] and second["duplicate"]
    wait_jobs(client, [first["job_id"]])
    [again] = accepted(client, [("renamed.txt", text)])
    assert again["duplicate"] and again["job_id"] == first["job_id"]
    assert again["state"] == "indexed" and again["job_state"] == "done"
    listed = client.get("/v1/documents").json()
    assert listed["total"] == 1 and listed["items"][0]["filename"] == "ferry.txt"


def test_delete_then_ask(client: Client) -> None:
    [doc] = accepted(client, [("bees.txt", b"The Quenby Vale apiary beekeeper is Tobiah Marsh.")])
    [other] = accepted(client, [("rail.txt", b"The Aldgate night train leaves at 23:15.")])
    wait_jobs(client, [doc["job_id"], other["job_id"]])
    question = "Who is the beekeeper of the Quenby Vale apiary?"
    assert ask(client, question)["citations"][0]["document_id"] == doc["document_id"]
    assert ask(client, question)["cached"]
    response = client.delete(f"/v1/documents/{doc['document_id']}")
    assert response.status_code == 200 and response.json()["deleted"] is True
    again = ask(client, question)
    assert not again["cached"]
    assert all(c["document_id"] != doc["document_id"] for c in again["citations"])
    assert client.delete(f"/v1/documents/{doc['document_id']}").json()["deleted"] is False
    assert client.get(f"/v1/documents/{doc['document_id']}").status_code == 404
    check_exactly_once(service_of(client))


def test_a_new_version_replaces_the_old_one(client: Client) -> None:
    first = b"The Quenby ferry to Holm Island leaves the north pier at 7:10 each morning."
    second = b"The Quenby ferry to Holm Island leaves the north pier at 8:45 each morning."
    third = b"The Quenby ferry to Holm Island leaves the north pier at 9:20 each morning."
    [v1] = accepted(client, [("ferry.txt", first)])
    wait_jobs(client, [v1["job_id"]])
    question = "When does the Quenby ferry to Holm Island leave?"
    assert "7:10" in ask(client, question)["citations"][0]["text"]
    [v2] = accepted(client, [("ferry.txt", second)])
    assert v2["version"] == 2 and v2["document_id"] != v1["document_id"]
    wait_jobs(client, [v2["job_id"]])
    doc = client.get(f"/v1/documents/{v2['document_id']}").json()
    assert [(v["id"], v["version"], v["state"]) for v in doc["versions"]] == [
        (v1["document_id"], 1, "replaced"), (v2["document_id"], 2, "indexed")]
    assert doc["replaces"] == v1["document_id"] and doc["versions"][1]["size"] == len(second)
    old = client.get(f"/v1/documents/{v1['document_id']}").json()
    assert old["state"] == "replaced" and len(old["versions"]) == 2
    answer = ask(client, question)
    assert not answer["cached"] and answer["citations"]
    assert all(c["document_id"] == v2["document_id"] and "7:10" not in c["text"]
               for c in answer["citations"])
    assert "8:45" in answer["citations"][0]["text"]
    # two new versions at once (one request, uploaded together): one ends current
    v3, v4 = accepted(client, [("ferry.txt", third), ("ferry.txt", first + b" Or so.")])
    assert (v3["version"], v4["version"]) == (3, 4)
    wait_jobs(client, [v3["job_id"], v4["job_id"]])
    listed = client.get("/v1/documents").json()
    assert listed["total"] == 1 and listed["items"][0]["id"] == v4["document_id"]
    states = [v["state"] for v in client.get(f"/v1/documents/{v1['document_id']}").json()[
        "versions"]]
    assert states == ["replaced", "replaced", "replaced", "indexed"]
    assert client.delete(f"/v1/documents/{v2['document_id']}").json()["deleted"] is True
    assert client.get("/v1/documents").json()["total"] == 0
    assert client.get(f"/v1/documents/{v4['document_id']}").status_code == 404
    check_exactly_once(service_of(client))


def test_list_documents_pages_and_filters(client: Client) -> None:
    for n in range(5):
        accepted(client, [(f"note{n}.txt", f"Note {n}: the pantry holds {n} jars.".encode())],
                 collection="even" if n % 2 == 0 else "odd")
    page = client.get("/v1/documents", params={"limit": 2, "offset": 1}).json()
    assert page["total"] == 5 and [d["filename"] for d in page["items"]] == ["note1.txt",
                                                                            "note2.txt"]
    evens = client.get("/v1/documents", params={"collection": "even"}).json()
    assert evens["total"] == 3 and {d["collection"] for d in evens["items"]} == {"even"}
    assert client.get("/v1/documents", params={"limit": 0}).status_code == 400
    assert client.get("/v1/documents", params={"limit": 201}).status_code == 400


def test_unknown_ids_are_404_with_a_json_reason(client: Client) -> None:
    for path in ("/v1/documents/abc", "/v1/jobs/abc"):
        response = client.get(path)
        assert response.status_code == 404
        assert response.json()["message"] and response.json()["hint"]
    assert client.post("/v1/jobs/abc/cancel").status_code == 404


def test_cancel_a_running_job(client: Client) -> None:
    service = service_of(client)
    [doc] = accepted(client, [("long.txt", long_text(200).encode())])
    job_id = doc["job_id"]
    running = wait_for(lambda: (lambda j: j if j["progress"]["done"] >= 64 else None)(
        client.get(f"/v1/jobs/{job_id}").json()), 300, 0.05, "64 chunks embedded")
    assert running["state"] == "running" and running["eta_s"] is not None
    response = client.post(f"/v1/jobs/{job_id}/cancel")
    assert response.status_code == 200 and response.json()["state"] == "cancelled"
    wait_for(lambda: client.get(f"/v1/documents/{doc['document_id']}").json()["state"]
             == "cancelled", 120, 0.1, "the job to stop")
    assert service.store.chunk_ids(doc["document_id"]) == []
    assert client.post(f"/v1/jobs/{job_id}/cancel").json()["state"] == "cancelled"  # idempotent
    check_exactly_once(service)
    [small] = accepted(client, [("small.txt", b"The kiln is fired on Tuesdays.")])
    wait_jobs(client, [small["job_id"]])
    finished = client.post(f"/v1/jobs/{small['job_id']}/cancel")
    assert finished.status_code == 409 and "already finished" in finished.json()["message"]


def test_deleting_a_document_while_it_is_embedded(client: Client) -> None:
    service = service_of(client)
    [doc] = accepted(client, [("long.txt", long_text(150).encode())])
    wait_for(lambda: client.get(f"/v1/jobs/{doc['job_id']}").json()["progress"]["done"] >= 64,
             300, 0.05, "64 chunks embedded")
    response = client.delete(f"/v1/documents/{doc['document_id']}")
    assert response.status_code == 200 and response.json()["deleted"] is True
    job = wait_jobs(client, [doc["job_id"]])[0]
    assert job["state"] == "cancelled"
    assert client.get(f"/v1/documents/{doc['document_id']}").status_code == 404
    wait_for(lambda: service.store.chunk_ids(doc["document_id"]) == [], 60, 0.1,
             "the stopped job to drop the chunks it stored")
    check_exactly_once(service)


def test_a_parse_failure_fails_that_job_only(client: Client, tmp_path: Path) -> None:
    broken = make_broken_docx(tmp_path / "minutes.docx").read_bytes()
    bad, good = accepted(client, [("minutes.docx", broken),
                                  ("ok.txt", b"The bell tower has eleven bells.")])
    failed, done = wait_jobs(client, [bad["job_id"], good["job_id"]])
    assert failed["state"] == "failed" and failed["attempts"] == 1
    assert "minutes.docx could not be read as docx" in failed["error"]
    assert done["state"] == "done"
    doc = client.get(f"/v1/documents/{bad['document_id']}").json()
    assert doc["state"] == "failed" and doc["error"]
    check_exactly_once(service_of(client))


def test_jobs_acknowledged_with_202_survive_a_restart(
    open_client: Callable[..., Client], tmp_path: Path
) -> None:
    first = open_client(tmp_path / "shared")
    files = [(f"part{n}.txt", long_text(25 + n).encode()) for n in range(6)]
    job_ids = [d["job_id"] for d in accepted(first, files)]
    stop(first)  # stop the API at once: its jobs are interrupted or still queued
    stopped = [job_store(service_of(first).settings).get(j) for j in job_ids]
    assert any(j is not None and j.state == "queued" for j in stopped), stopped
    second = open_client(tmp_path / "shared")
    jobs = wait_jobs(second, job_ids)
    assert [j["state"] for j in jobs] == ["done"] * 6
    assert second.get("/v1/documents").json()["total"] == 6
    check_exactly_once(service_of(second))


def test_filenames_are_sanitized(client: Client, tmp_path: Path) -> None:
    names = ["../../../../tmp/evil.txt", "..\\..\\windows\\win.ini.txt", "con:<a>|b*?.txt",
             "  .hidden.txt", "/etc/passwd"]
    uploaded = accepted(client, [(n, f"File {i} of the sanitizer test.".encode())
                                 for i, n in enumerate(names)])
    stored = [client.get(f"/v1/documents/{d['document_id']}").json()["filename"]
              for d in uploaded]
    assert stored == ["evil.txt", "win.ini.txt", "con_a_b_.txt", "hidden.txt", "passwd"]
    uploads = service_of(client).settings.uploads_dir
    assert sorted(p.name for p in uploads.iterdir() if p.is_file()) == sorted(
        d["document_id"] for d in uploaded)
    assert not (tmp_path.parent / "evil.txt").exists() and not Path("/tmp/evil.txt").exists()


def test_routes_are_in_the_openapi_schema(client: Client) -> None:
    schema = client.get("/schema/openapi.json").json()
    upload_op = schema["paths"]["/v1/documents"]["post"]
    assert "multipart/form-data" in upload_op["requestBody"]["content"]
    assert "202" in upload_op["responses"] and "Upload one or more files" in upload_op[
        "description"]
    assert "get" in schema["paths"]["/v1/jobs/{job_id}"]
    assert "post" in schema["paths"]["/v1/jobs/{job_id}/cancel"]


def test_ingest_routes_need_the_ingest_scope(open_client: Callable[..., Client]) -> None:
    keys = {"ask-key": ["ask"], "ingest-key": ["ingest"]}
    client = open_client(api_keys=keys)
    files = [("file", ("a.txt", b"The well is 30 metres deep."))]
    assert client.post("/v1/documents", files=files).status_code == 401
    assert client.post("/v1/documents", files=files,
                       headers={"X-API-Key": "ask-key"}).status_code == 403
    response = client.post("/v1/documents", files=files, headers={"X-API-Key": "ingest-key"})
    assert response.status_code == 202
    job_id = response.json()["documents"][0]["job_id"]
    assert client.get(f"/v1/jobs/{job_id}").status_code == 401
    assert client.get(f"/v1/jobs/{job_id}", headers={"X-API-Key": "ingest-key"}).status_code \
        == 200


# Hostile and malformed requests: each refused with a JSON reason, nothing stored.


def png() -> bytes:
    return b"\x89PNG\r\n\x1a\n" + bytes(200)


def plain_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("notes/readme.txt", "not an office document")
    return buffer.getvalue()


def raw(content_type: str, body: bytes) -> dict[str, Any]:
    return {"content": body, "headers": {"content-type": content_type}}


BOUNDARY = "----rag-test-boundary"
TRUNCATED = (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; "
             f"filename=\"a.txt\"\r\n\r\nhalf a file").encode()

HOSTILE: dict[str, tuple[dict[str, Any], int, str]] = {
    "url-encoded body": (raw("application/x-www-form-urlencoded", b"file=abc"), 415,
                         "multipart/form-data"),
    "json body": (raw("application/json", b'{"file": "abc"}'), 415, "multipart/form-data"),
    "no body at all": ({}, 415, "multipart/form-data"),
    "no boundary": (raw("multipart/form-data", b"x"), 422, "no boundary"),
    "truncated multipart": (raw(f"multipart/form-data; boundary={BOUNDARY}", TRUNCATED), 422,
                            "malformed"),
    "fields but no files": ({"files": [("collection", (None, "docs"))]}, 422, "no files"),
    "unknown field": ({"files": [("file", ("a.txt", b"text")), ("owner", (None, "me"))]}, 422,
                      "Unknown form field"),
    "metadata not json": ({"files": [("file", ("a.txt", b"text"))],
                           "data": {"metadata": "{team: ops"}}, 422, "not valid JSON"),
    "metadata not an object": ({"files": [("file", ("a.txt", b"text"))],
                                "data": {"metadata": "[1, 2]"}}, 422, "JSON object"),
    "collection with a path": ({"files": [("file", ("a.txt", b"text"))],
                                "data": {"collection": "../etc"}}, 422, "not allowed"),
    "empty file": ({"files": [("file", ("empty.txt", b""))]}, 422, "empty.txt is empty"),
    "image named txt": ({"files": [("file", ("notes.txt", png()))]}, 415, "image/png"),
    "text named pdf": ({"files": [("file", ("report.pdf", b"just some text " * 20))]}, 415,
                       "named as a pdf"),
    "zip that is not office": ({"files": [("file", ("archive.docx", plain_zip()))]}, 415,
                               "not a Word"),
    "too many files": ({"files": [("file", (f"{n}.txt", b"text")) for n in range(4)]}, 413,
                       "more than 3 files"),
    "file over the limit": ({"files": [("file", ("big.txt", b"x" * 5000))]}, 413,
                            "big.txt is over the limit of 4000 bytes"),
    "request over the limit": ({"files": [("file", (f"{n}.txt", b"y" * 3000))
                                          for n in range(3)]}, 413, "over the limit"),
    "good file with a bad one": ({"files": [("file", ("ok.txt", b"fine text")),
                                            ("file", ("scan.png", png()))]}, 422,
                                 "scan.png is not a readable image"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_uploads_are_refused_and_leave_nothing(
    open_client: Callable[..., Client], case: str
) -> None:
    client = open_client(max_files_per_request=3, max_file_bytes=4000, max_request_bytes=8000)
    request, status, fragment = HOSTILE[case]
    response = client.post("/v1/documents", **request)
    assert response.status_code == status, response.text
    body = response.json()
    assert fragment in body["message"] and body["hint"], body
    nothing_stored(client)


def test_zip_bombs_are_refused(client: Client, tmp_path: Path) -> None:
    bomb = make_bomb(tmp_path / "bomb.docx").read_bytes()
    response = upload(client, [("bomb.docx", bomb)])
    assert response.status_code == 413
    assert "decompression bomb" in response.json()["hint"]
    nothing_stored(client)


def test_an_oversized_content_length_is_refused_before_reading(
    open_client: Callable[..., Client]
) -> None:
    app = open_client(max_request_bytes=1000).app
    reads: list[int] = []
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        reads.append(1)
        return {"type": "http.request", "body": b"x" * 1000, "more_body": True}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
             "scheme": "http", "path": "/v1/documents", "raw_path": b"/v1/documents",
             "query_string": b"", "root_path": "", "client": ("127.0.0.1", 5000),
             "server": ("127.0.0.1", 8000), "state": {},
             "headers": [(b"content-type", f"multipart/form-data; boundary={BOUNDARY}".encode()),
                         (b"content-length", b"50000000000")]}
    asyncio.run(app(scope, receive, send))  # type: ignore[arg-type]
    assert sent[0]["status"] == 413 and reads == []
    assert b"over the limit" in b"".join(m.get("body", b"") for m in sent[1:])


def test_202_means_stored(client: Client) -> None:
    """When the answer comes, the bytes and the job record are on disk (another connection
    sees them), whatever the job is doing."""
    [doc] = accepted(client, [("durable.txt", b"The archive opens at nine on Mondays.")])
    settings = service_of(client).settings
    assert (settings.uploads_dir / doc["document_id"]).read_bytes().startswith(b"The archive")
    other = job_store(settings)
    record = other.get(doc["job_id"])
    assert record is not None and record.document_id == doc["document_id"]
    other.close()
