"""The source view: every citation and quote links to a page that shows it marked in its
source (a PDF on its rendered page), opened by a signed, expiring, per-document token; the
original file for ingest keys."""

from __future__ import annotations

import hashlib
import io
import logging
import time
from collections.abc import Iterator
from dataclasses import replace
from html import escape
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from litestar import Litestar
from litestar.testing import TestClient
from PIL import Image

from api.app import REDACT_TOKENS, server_config
from api.view import view_page
from api.view_links import ViewLinks
from rag.access import REFUSED
from rag.documents.pages import PageQuote
from rag.documents.sources import Passage
from rag.service import RagService
from rag.settings import Settings
from rag.types import Document
from tests.api.helpers import (
    ADMIN_KEY,
    ASK_KEY,
    CORPUS,
    INGEST_KEY,
    KEYS,
    app_settings,
    ingest_corpus,
    parse_sse,
    serving,
)
from tests.ingest.helpers import make_pdf

pytestmark = pytest.mark.slow

FACT = ("The Quillby lighthouse keeper records 412 passing ships every winter, writing each "
        "name in a green ledger that is kept in the lamp room.")
PDF_PAGES = ["A short history of the Quillby coast. The first lamp was lit in 1871 and the "
             "keepers changed every ten years. " * 3,
             "Winter at the lighthouse. " + FACT + " The ledger is sent to the harbour office "
             "each spring."]
SHIPS = "How many passing ships does the Quillby lighthouse keeper record every winter?"
BEES = "Who is the beekeeper of the Larkspur apiary?"
ASK = {"Authorization": f"Bearer {ASK_KEY}"}


@pytest.fixture(scope="module")
def view_service(tmp_path_factory: pytest.TempPathFactory, embedder: Any, generator: Any
                 ) -> Iterator[RagService]:
    """The packaged models over the API corpus and a two-page PDF."""
    root = tmp_path_factory.mktemp("view")
    service = RagService(Settings(data_dir=root / "data", max_new_tokens=24, top_k=3),
                         embedder=embedder, generator=generator)
    service.load()
    ingest_corpus(service, root / "corpus")
    service.documents.ingest_file(make_pdf(root / "quillby.pdf", PDF_PAGES))
    yield service
    service.store.close()


@pytest.fixture(scope="module")
def client(view_service: RagService) -> Iterator[TestClient[Litestar]]:
    with serving(view_service, api_keys=KEYS) as client:
        yield client


def document(service: RagService, filename: str) -> Document:
    docs, _ = service.documents.page(limit=100)
    return next(d for d in docs if d.filename == filename)


def opened(client: TestClient[Litestar], url: str, **headers: str) -> Any:
    """GET a view_url as a new browser tab does: no key header (unless given)."""
    return client.get(url, headers=headers)


def marked(page: str, text: str) -> bool:
    """Whether `text` stands in the page exactly as one `<mark>`'s content."""
    return f">{escape(text)}</mark>" in page


def test_ask_json_links_each_citation_and_quote_to_it_marked_in_its_source(
    client: TestClient[Litestar], view_service: RagService
) -> None:
    answer = client.post("/v1/ask", json={"question": SHIPS}, headers=ASK).json()
    pdf = document(view_service, "quillby.pdf")
    assert answer["citations"] and answer["evidence"]
    for item in [*answer["citations"], *answer["evidence"]]:
        url = urlsplit(item["view_url"])
        assert url.path == f"/v1/documents/{item['document_id']}/view"
        query = parse_qs(url.query)
        assert query["start"] == [str(item["start"])] and query["end"] == [str(item["end"])]
        assert query["token"][0]
    quote = next(q for q in answer["evidence"] if q["document_id"] == pdf.id)
    assert "412" in quote["text"] and quote["page"] == 2
    page = opened(client, quote["view_url"])
    assert page.status_code == 200, page.text
    assert page.headers["content-type"].startswith("text/html")
    assert "script-src 'sha256-" in page.headers["content-security-policy"]
    assert marked(page.text, quote["text"])  # the quote, exactly, in the text below the page
    assert 'class="box" id=quote' in page.text  # and its box over the rendered page
    image = page.text.split('<img src="')[1].split('"')[0].replace("&amp;", "&")
    assert urlsplit(image).path == f"/v1/documents/{pdf.id}/pages/2"
    png = opened(client, image)
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    with Image.open(io.BytesIO(png.content)) as rendered:
        assert rendered.format == "PNG" and rendered.width > 800 and rendered.height > 1000
        assert len(rendered.convert("L").getcolors(256) or []) > 2, "the page is blank"


def test_streamed_and_chat_answers_carry_view_urls(
    client: TestClient[Litestar], view_service: RagService
) -> None:
    stream = client.post("/v1/ask", json={"question": BEES, "stream": True}, headers=ASK)
    events = {e.event: e.json() for e in parse_sse(stream.text) if e.event != "token"}
    done, citations = events["done"], events["citations"]
    assert citations and all(c["view_url"] for c in citations)
    assert done["evidence"] and all(q["view_url"] for q in done["evidence"])
    quote = done["evidence"][0]
    page = opened(client, quote["view_url"])
    assert page.status_code == 200 and marked(page.text, quote["text"])
    assert quote["text"] in CORPUS[quote["filename"]]

    chat = client.post("/v1/chat/completions", headers=ASK, json={
        "model": view_service.asking.model, "messages": [{"role": "user", "content": BEES}]})
    rag = chat.json()["choices"][0]["message"]["rag"]
    assert rag["citations"] and rag["evidence"]
    for item in [*rag["citations"], *rag["evidence"]]:
        shown = opened(client, item["view_url"])
        assert shown.status_code == 200 and marked(shown.text, item["text"])


def test_markdown_view_shows_the_parsed_text_around_the_quote(
    client: TestClient[Litestar], view_service: RagService
) -> None:
    tides = document(view_service, "tides.md")
    text = "Fishing boats leave an hour before high tide."
    chunks = view_service.store.get_chunks(view_service.store.chunk_ids(tides.id))
    chunk = next(c for c in chunks.values() if text in c.text)  # its text: the parsed text's
    start = chunk.start + chunk.text.index(text)
    end = start + len(text)
    page = opened(client, ViewLinks(client.app.state["settings"]).view_url(
        tides.id, start, end, None))
    assert page.status_code == 200 and marked(page.text, text)
    assert '<mark id="quote">' in page.text and "Port Vell" in page.text
    assert "<img" not in page.text  # not a PDF: text only


def test_tokens_open_one_document_until_they_expire(
    client: TestClient[Litestar], view_service: RagService
) -> None:
    links = ViewLinks(client.app.state["settings"])
    bees, rail = document(view_service, "bees.txt"), document(view_service, "rail.txt")
    url = links.view_url(bees.id, 0, 20, None)
    assert opened(client, url).status_code == 200
    token = parse_qs(urlsplit(url).query)["token"][0]
    base = f"/v1/documents/{bees.id}/view?start=0&end=20"

    altered = token[:-1] + ("A" if token[-1] != "A" else "B")
    expired = links.sign(bees.id, int(time.time()) - 5)
    others = parse_qs(urlsplit(links.view_url(rail.id, 0, 20, None)).query)["token"][0]
    for bad in (altered, expired, others, f"{int(time.time()) + 600}.forged", "x" * 60):
        refused = opened(client, f"{base}&token={bad}")
        assert refused.status_code == 403, (bad, refused.text)
        assert refused.json()["error"] == "Forbidden" and refused.json()["hint"]
    assert "expired" in opened(client, f"{base}&token={expired}").json()["message"]
    # A later expiry cannot be claimed with the old signature.
    later = f"{int(token.split('.')[0]) + 3600}.{token.split('.')[1]}"
    assert opened(client, f"{base}&token={later}").status_code == 403
    # Another document's token opens neither this document's view nor its page images.
    pdf = document(view_service, "quillby.pdf")
    on_pages = opened(client, f"/v1/documents/{pdf.id}/pages/1?token={token}")
    assert on_pages.status_code == 403 and on_pages.json()["error"] == "Forbidden"
    assert opened(client, links.page_url(pdf.id, 1)).status_code == 200

    assert opened(client, base).status_code == 401  # neither token nor key
    assert opened(client, base, **ASK).status_code == 200  # a key with the ask scope
    assert opened(client, base, Authorization=f"Bearer {INGEST_KEY}").status_code == 403
    # Another process with the same keys accepts the token; other keys do not.
    same = ViewLinks(app_settings(view_service, api_keys=KEYS))
    same.check(token, bees.id)
    with pytest.raises(Exception, match="not valid"):
        ViewLinks(app_settings(view_service, api_keys={"other-key-1234": ["ask"]})).check(
            token, bees.id)


def test_unknown_spans_pages_and_deleted_documents_are_404(
    client: TestClient[Litestar], view_service: RagService, tmp_path: Path
) -> None:
    links = ViewLinks(client.app.state["settings"])
    bees, pdf = document(view_service, "bees.txt"), document(view_service, "quillby.pdf")
    assert opened(client, links.view_url(bees.id, 0, 10_000, None)).status_code == 404
    reversed_ = opened(client, links.view_url(bees.id, 20, 10, None))
    assert reversed_.status_code == 400 and reversed_.json()["details"][0]["key"] == "end"
    assert opened(client, links.view_url(bees.id, 20, 20, None)).status_code == 400
    assert opened(client, links.view_url(pdf.id, 0, 20, 9)).status_code == 404  # no page 9
    assert opened(client, links.page_url(pdf.id, 3)).status_code == 404
    assert opened(client, links.page_url(bees.id, 1)).status_code == 404  # not a PDF

    ingest_corpus(view_service, tmp_path, {"gone.txt": "A note that will be deleted soon."})
    gone = document(view_service, "gone.txt")
    url = links.view_url(gone.id, 0, 6, None)
    assert opened(client, url).status_code == 200
    assert view_service.documents.delete(gone.id)
    deleted = opened(client, url)
    assert deleted.status_code == 404 and deleted.json()["error"] == "NotFound"


def test_file_gives_the_original_bytes_to_ingest_keys(
    client: TestClient[Litestar], view_service: RagService
) -> None:
    pdf = document(view_service, "quillby.pdf")
    for key in (INGEST_KEY, ADMIN_KEY):
        got = client.get(f"/v1/documents/{pdf.id}/file", headers={"X-API-Key": key})
        assert got.status_code == 200
        # the id is the SHA-256 of the uploaded bytes
        assert hashlib.sha256(got.content).hexdigest() == pdf.id
        assert len(got.content) == pdf.size and got.content.startswith(b"%PDF")
        assert got.headers["content-type"] == "application/pdf"
        assert got.headers["content-disposition"].startswith('attachment; filename="quillby.pdf"')
    tides = document(view_service, "tides.md")
    got = client.get(f"/v1/documents/{tides.id}/file", headers={"X-API-Key": INGEST_KEY})
    assert got.content == CORPUS["tides.md"].encode()
    assert got.headers["content-type"].startswith("text/markdown")
    refused = client.get(f"/v1/documents/{pdf.id}/file", headers=ASK)
    assert refused.status_code == 403 and refused.json()["error"] == "Forbidden"
    unknown = client.get("/v1/documents/0123/file", headers={"X-API-Key": INGEST_KEY})
    assert unknown.status_code == 404


def test_open_mode_links_carry_no_token(view_service: RagService) -> None:
    with serving(view_service) as client:
        answer = client.post("/v1/ask", json={"question": BEES}).json()
        url = answer["evidence"][0]["view_url"]
        assert "token=" not in url
        page = client.get(url)
        assert page.status_code == 200 and marked(page.text, answer["evidence"][0]["text"])


def test_markup_in_names_and_text_is_shown_as_text(
    client: TestClient[Litestar], view_service: RagService, tmp_path: Path
) -> None:
    name = '<img src=x onerror="window.__pwned=1">.txt'
    text = ("The Fenwick gauge reads 4.1 metres. <script>window.__pwned=2</script>"
            '<b id="injected">bold</b>')
    (tmp_path / "gauge.txt").write_text(text)
    doc = view_service.documents.ingest_file(tmp_path / "gauge.txt", filename=name)
    chunks = view_service.store.get_chunks(view_service.store.chunk_ids(doc.id))
    chunk = next(iter(chunks.values()))
    links = ViewLinks(client.app.state["settings"])
    page = opened(client, links.view_url(doc.id, chunk.start, chunk.end, None)).text
    assert marked(page, chunk.text) and "<script>window" in chunk.text
    assert escape(name) in page
    assert "<script>window" not in page and "<b id" not in page and "<img src=x" not in page
    assert page.count("<script>") == 1  # the page's own, allowed by its hash alone


def test_a_scanned_page_shows_its_image_and_the_quote_marked_in_its_text() -> None:
    doc = Document(id="ab" * 32, filename="scan.pdf", content_type="application/pdf", size=1)
    scanned = PageQuote(page=1, pages=1, width=595.0, height=842.0, boxes=(), has_text=False)
    passage = Passage(document=doc, start=10, end=20, before="before ", quote="the <quote>",
                      after=" after", more_before=True, more_after=False, page=1,
                      on_page=scanned)
    page = view_page(passage, "/v1/documents/abab/pages/1?token=1.x")
    assert '<img src="/v1/documents/abab/pages/1?token=1.x" width="793" height="1123"' in page
    assert '<mark id="quote">the &lt;quote&gt;</mark>' in page and "no text layer" in page
    assert 'class="box"' not in page


def test_a_pdf_whose_upload_is_missing_or_unreadable_is_shown_as_text(
    client: TestClient[Litestar], view_service: RagService, tmp_path: Path
) -> None:
    text = "The Ormsby canal lock opens at dawn and closes when the bell rings at dusk."
    doc = view_service.documents.ingest_file(make_pdf(tmp_path / "ormsby.pdf", [text]))
    links = ViewLinks(client.app.state["settings"])
    chunk = next(iter(view_service.store.get_chunks(view_service.store.chunk_ids(doc.id))
                      .values()))
    url = links.view_url(doc.id, chunk.start, chunk.end, 1)
    upload = view_service.uploads.path(doc.id)  # type: ignore[attr-defined]
    upload.write_bytes(b"%PDF-1.4 damaged beyond reading")
    for _ in ("unreadable", "missing"):
        page = opened(client, url)
        assert page.status_code == 200 and marked(page.text, chunk.text)
        assert "<img" not in page.text and "page image is not available" in page.text
        assert opened(client, links.page_url(doc.id, 1)).status_code == 404
        upload.unlink(missing_ok=True)


def test_pages_are_rendered_once_and_kept(view_service: RagService) -> None:
    pdf = document(view_service, "quillby.pdf")
    first = view_service.sources.page_image(pdf.id, 1)
    assert view_service.sources.page_image(pdf.id, 1) is first  # the cached bytes
    passage = view_service.sources.passage(pdf.id, 0, 40, 1)
    assert view_service.sources.passage(pdf.id, 0, 40, 1).on_page is passage.on_page


def test_view_tokens_are_kept_out_of_the_access_log(
    view_service: RagService, caplog: pytest.LogCaptureFixture
) -> None:
    settings = app_settings(view_service, api_keys=KEYS)
    server_config(object(), settings, log_config=None)  # type: ignore[arg-type]
    access = logging.getLogger("uvicorn.access")
    assert REDACT_TOKENS in access.filters
    token = ViewLinks(settings).sign("ab" * 32, int(time.time()) + 60)
    path = f"/v1/documents/{'ab' * 32}/view?start=0&end=9&token={token}"
    with caplog.at_level(logging.INFO, logger="uvicorn.access"):
        # what uvicorn's access logger writes for a request
        access.info('%s - "%s %s HTTP/%s" %d', "127.0.0.1:5000", "GET", path, "1.1", 200)
    logged = caplog.records[-1].getMessage()
    assert token not in logged and "start=0&end=9&token=[redacted]" in logged


def same_as_unknown(refused: Any, unknown: Any, doc_id: str, fake_id: str) -> bool:
    """Whether a refused read answers exactly as an unknown id does (its own id aside)."""
    return bool(refused.status_code == unknown.status_code == 404
                and refused.text.replace(doc_id, fake_id) == unknown.text)


def test_a_key_opens_no_view_page_or_file_of_another_tenant(
    client: TestClient[Litestar], view_service: RagService, tmp_path: Path
) -> None:
    """A document of tenant `acme` is, for the `default` tenant's keys (admin included), a 404
    exactly like an unknown id; a token minted for it still opens it (and only it)."""
    path = make_pdf(tmp_path / "harrow.pdf", ["The Harrowgate vault opens with code 5521."])
    doc = view_service.store.put_document(replace(
        view_service.documents.ingest_file(path), tenant="acme"))
    fake = "f" * 64
    links = ViewLinks(client.app.state["settings"])
    view, page = "/v1/documents/{}/view?start=0&end=10", "/v1/documents/{}/pages/1"
    before = REFUSED.snapshot().get("view", 0)
    for key in (ASK_KEY, ADMIN_KEY):
        auth = {"Authorization": f"Bearer {key}"}
        for route in (view, page):
            refused = opened(client, route.format(doc.id), **auth)
            assert same_as_unknown(refused, opened(client, route.format(fake), **auth),
                                   doc.id, fake), refused.text
    for key in (INGEST_KEY, ADMIN_KEY):
        auth = {"X-API-Key": key}
        refused = client.get(f"/v1/documents/{doc.id}/file", headers=auth)
        assert same_as_unknown(refused, client.get(f"/v1/documents/{fake}/file", headers=auth),
                               doc.id, fake), refused.text
    assert REFUSED.snapshot().get("view", 0) - before == 6  # unknown ids are not counted

    minted = links.view_url(doc.id, 0, 10, 1)  # as an answer to an acme key would carry it
    shown = opened(client, minted)
    assert shown.status_code == 200 and "vault opens with code 5521" in shown.text
    assert opened(client, links.page_url(doc.id, 1)).status_code == 200
    assert opened(client, minted, **ASK).status_code == 200  # the token, whoever sends it
    token = parse_qs(urlsplit(minted).query)["token"][0]
    bees, pdf = document(view_service, "bees.txt"), document(view_service, "quillby.pdf")
    for other in (f"/v1/documents/{bees.id}/view?start=0&end=10&token={token}",
                  f"/v1/documents/{pdf.id}/pages/1?token={token}"):
        assert opened(client, other).status_code == 403
    assert opened(client, view.format(bees.id), **ASK).status_code == 200  # its own tenant's
