"""The widget in headless Chromium, on host pages of other origins, against the running service
(uvicorn, packaged models, the shipped sample corpus)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from api.app import create_app
from api.auth import key_id
from rag.service import RagService
from rag.settings import Settings
from tests.api.helpers import app_settings, free_port, live_server

pytestmark = [pytest.mark.browser, pytest.mark.slow]

SAMPLES = Path(__file__).resolve().parents[2] / "rag" / "samples"
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
WIDGET_KEY = "widget-ask-only-3f9a7c"

HOST_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>A host page</title>
<style>body {{ font-family: serif; }} textarea {{ background: rgb(255, 0, 0); }}
h2 {{ font-size: 40px; }}</style></head>
<body><h1>Someone else's page</h1><h2 id="host-heading">Its own heading</h2>
<script src="{api}/widget.js" data-api="{api}" data-key="{key}"></script>
</body></html>"""

# Records, from before the question is asked, every state the widget leaves and the answer's
# length (with the state at that moment) at each change: the test then waits for the end state
# only, since a transient one such as `streaming` can pass between two polls.
WATCH_ANSWER = """() => {
  // One observer for the widget's state and its answer, so that the records come in the order
  // the page made them even when several land in one callback (a last token and `done` may):
  // each piece of text added is recorded with the state it was added in.
  const host = document.querySelector('.rag-widget');
  const answer = host.shadowRoot.querySelector('.answer');
  window.statesLeft = [];
  window.answerUpdates = [];
  const watch = new MutationObserver(records => records.forEach((r, n) => {
    if (r.type === 'attributes') {
      window.statesLeft.push(r.oldValue);
      return;
    }
    // the state then: what the next state change left, or the state now if none came after
    const next = records.slice(n + 1).find(c => c.type === 'attributes');
    const state = next ? next.oldValue : host.dataset.state;
    const added = [...r.addedNodes].reduce((sum, node) => sum + node.textContent.length, 0);
    window.answerUpdates.push({state, added, removed: r.removedNodes.length,
                               length: answer.textContent.length});
  }));
  watch.observe(host, {attributeFilter: ['data-state'], attributeOldValue: true});
  watch.observe(answer, {childList: true, characterData: true, subtree: true});
}"""


class HostPages:
    """Serves one host page per path on its own 127.0.0.1 port (so its own origin)."""

    def __init__(self, pages: dict[str, str], port: int) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (the http.server API)
                body = pages.get(self.path, "").encode()
                self.send_response(200 if body else 404)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                """Quiet."""

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.origin = f"http://127.0.0.1:{port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def sample_service(
    tmp_path_factory: pytest.TempPathFactory, embedder: Any, generator: Any
) -> Iterator[RagService]:
    settings = Settings(data_dir=tmp_path_factory.mktemp("widget") / "data", max_new_tokens=48,
                        top_k=3)
    service = RagService(settings, embedder=embedder, generator=generator)
    service.load()
    for path in sorted(SAMPLES.iterdir()):
        service.documents.ingest_file(path, collection="sample")
    yield service
    service.store.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: install Chromium (`make chromium`)")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def widget(page: Any, selector: str) -> Any:
    """A locator inside the widget (Playwright's CSS pierces its open shadow root)."""
    return page.locator(f".rag-widget {selector}")


def top(locator: Any) -> float:
    """Where an element starts on the page, in pixels from the top."""
    box = locator.bounding_box()
    assert box is not None, "the element is not shown"
    return float(box["y"])


def ask(page: Any, question: str) -> None:
    widget(page, "textarea").fill(question)
    widget(page, "textarea").press("Enter")


def test_widget_streams_an_answer_with_citations_and_explains_errors(
    sample_service: RagService, browser: Any
) -> None:
    started = time.perf_counter()
    allowed_port, other_port = free_port(), free_port()
    allowed_origin = f"http://127.0.0.1:{allowed_port}"
    settings = app_settings(sample_service, api_keys={WIDGET_KEY: ["ask"]},
                            cors_origins=[allowed_origin], rate_limit_per_minute=60)
    with live_server(create_app(settings, service=sample_service)) as api:
        pages = {"/": HOST_PAGE.format(api=api, key=WIDGET_KEY),
                 "/bad-key.html": HOST_PAGE.format(api=api, key="not-the-key")}
        host, elsewhere = HostPages(pages, allowed_port), HostPages(pages, other_port)
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 900})
            page.goto(host.origin + "/")
            assert page.locator(".rag-widget").get_attribute("data-state") == "idle"

            # Styles stay on their side of the shadow root.
            assert widget(page, "textarea").evaluate(
                "e => getComputedStyle(e).backgroundColor") != "rgb(255, 0, 0)"
            assert page.locator("#host-heading").evaluate(
                "e => getComputedStyle(e).fontSize") == "40px"

            page.evaluate(WATCH_ANSWER)
            ask(page, "What is the default chunk size?")
            page.wait_for_selector(".rag-widget[data-state=done]", timeout=300_000)

            states = [*page.evaluate("window.statesLeft"), "done"]
            assert states == ["idle", "asking", "streaming", "done"], states
            updates = page.evaluate("window.answerUpdates")
            # Checked sentences show as they arrive (this answer is one sentence: one piece),
            # appended while streaming; `done` then re-renders the answer (its [n] links), and
            # what streamed is the answer itself.
            first_rewrite = next(n for n, u in enumerate(updates) if u["removed"])
            streamed = sum(u["added"] for u in updates[:first_rewrite]
                           if u["state"] == "streaming")
            assert streamed, f"nothing showed while the answer streamed: {updates}"
            assert updates[-1]["length"] == streamed, updates
            answer = widget(page, ".answer").inner_text()
            assert answer.strip()
            # The short answer first, in bold: the words of the evidence that answer.
            short = widget(page, ".short")
            assert short.inner_text() == "200 tokens"
            assert int(short.evaluate("e => getComputedStyle(e).fontWeight")) >= 700
            assert top(short) < top(widget(page, ".answer"))
            sources = widget(page, "summary").all_inner_texts()
            assert sources[0].startswith("[1] ")
            cited = [s for s in sources if "ingestion.md" in s]
            assert cited, sources
            summary = widget(page, "summary").filter(has_text="ingestion.md").first
            summary.click()
            quote = widget(page, "details[open] blockquote")
            assert quote.is_visible() and "chunk" in quote.inner_text().lower()
            assert "Answered in" in widget(page, ".meta").inner_text()

            # The supporting quote under the answer, its words highlighted in the source passage.
            evidence = widget(page, ".evidence")
            assert evidence.locator("p").inner_text() in (
                "Supported by:", "The model's answer could not be checked against the sources, "
                "so this is the passage that best answers the question:")
            shown = evidence.locator("blockquote.quote").first
            marked = widget(page, "details blockquote mark").first.text_content() or ""
            assert "200" in marked and marked in (shown.text_content() or "")
            assert "ingestion.md" in shown.locator("cite").inner_text()

            ARTIFACTS.mkdir(exist_ok=True)
            shot = ARTIFACTS / "widget-answer.png"
            page.screenshot(path=str(shot), full_page=True)
            print(f"\nscreenshot: {shot}")

            # A wrong key: the service says 401, the widget says so in plain words.
            page.goto(host.origin + "/bad-key.html")
            ask(page, "What is the default chunk size?")
            page.wait_for_selector(".rag-widget[data-state=error]", timeout=30_000)
            error = widget(page, ".error").inner_text()
            assert "did not accept this page's access key" in error
            page.screenshot(path=str(ARTIFACTS / "widget-error.png"), full_page=True)
            print(f"screenshot: {ARTIFACTS / 'widget-error.png'}")

            # An origin that CORS does not allow gets nothing from the service.
            page.goto(elsewhere.origin + "/")
            ask(page, "What is the default chunk size?")
            page.wait_for_selector(".rag-widget[data-state=error]", timeout=30_000)
            assert "Could not reach the service" in widget(page, ".error").inner_text()
            page.close()
        finally:
            host.close()
            elsewhere.close()
    print(f"browser test body: {time.perf_counter() - started:.1f} s")


def done_count(page: Any, count: int) -> None:
    """Wait until the widget has finished `count` answers in its stored thread."""
    page.wait_for_function(
        """n => { const s = JSON.parse(sessionStorage.getItem(Object.keys(sessionStorage)
                    .find(k => k.startsWith('rag-widget:')) || 'null'));
                  return s && s.turns.length === n &&
                         document.querySelector('.rag-widget').dataset.state === 'done'; }""",
        arg=count, timeout=180_000)


def stored_thread(page: Any) -> Any:
    return page.evaluate("""() => JSON.parse(sessionStorage.getItem(Object.keys(sessionStorage)
                              .find(k => k.startsWith('rag-widget:'))))""")


def test_widget_keeps_a_thread_across_reloads_with_ratings(
    sample_service: RagService, browser: Any
) -> None:
    port = free_port()
    settings = app_settings(sample_service, api_keys={WIDGET_KEY: ["ask"]},
                            cors_origins=[f"http://127.0.0.1:{port}"])
    with live_server(create_app(settings, service=sample_service)) as api:
        host = HostPages({"/": HOST_PAGE.format(api=api, key=WIDGET_KEY)}, port)
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 1200})
            page.goto(host.origin + "/")
            assert not widget(page, "button.new").is_visible()
            ask(page, "What is the default chunk size?")
            done_count(page, 1)
            ask(page, "How many tokens do consecutive ones share?")
            done_count(page, 2)

            thread = stored_thread(page)
            conversation = thread["conversation"]
            assert conversation.startswith("conv_")
            turns = sample_service.conversations.get(conversation, key_id(WIDGET_KEY)).turns
            assert [t.question for t in turns] == [
                "What is the default chunk size?", "How many tokens do consecutive ones share?"]
            assert len(turns[1].history) == 1, "the follow-up was answered with its history"
            assert "ingestion.md" in turns[1].documents
            # The earlier turn moved into the thread; the latest is the answer shown.
            assert widget(page, ".turn .q").all_inner_texts() == [turns[0].question]
            assert widget(page, ".asked").inner_text() == turns[1].question
            # It reads top to bottom: the earlier turn, the latest answer, then the ask box.
            assert top(widget(page, ".turn")) < top(widget(page, ".asked")) < top(
                widget(page, ".answer")) < top(widget(page, "form"))
            assert widget(page, ".turn .short-a").inner_text() == "200 tokens"

            widget(page, ".feedback button.down").click()
            page.wait_for_selector('.rag-widget .feedback button.down[aria-pressed="true"]')
            ratings = sample_service.conversations.store.feedback()
            assert ratings[-1].answer_id == turns[1].id and ratings[-1].rating == "down"

            page.reload()
            assert widget(page, ".turn .q").all_inner_texts() == [t.question for t in turns]
            assert widget(page, '.turn button.down[aria-pressed="true"]').count() == 1
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "widget-thread.png"), full_page=True)

            widget(page, "button.new").click()
            assert widget(page, ".turn").count() == 0 and stored_thread(page) is None
            ask(page, "Which embedding model is used by default?")
            done_count(page, 1)
            assert stored_thread(page)["conversation"] != conversation
            page.close()
        finally:
            host.close()


def test_a_citation_opens_its_pdf_page_with_the_quote_marked(
    sample_service: RagService, browser: Any, tmp_path: Path
) -> None:
    """Click a source in the widget: a new tab shows the PDF page with the quote marked on it,
    scrolled into view (checked on the screenshot's pixels)."""
    from tests.api.test_view import PDF_PAGES, SHIPS
    from tests.ingest.helpers import make_pdf

    doc = sample_service.documents.ingest_file(make_pdf(tmp_path / "quillby.pdf", PDF_PAGES),
                                               collection="sample")
    port = free_port()
    settings = app_settings(sample_service, api_keys={WIDGET_KEY: ["ask"]},
                            cors_origins=[f"http://127.0.0.1:{port}"])
    try:
        with live_server(create_app(settings, service=sample_service)) as api:
            host = HostPages({"/": HOST_PAGE.format(api=api, key=WIDGET_KEY)}, port)
            try:
                page = browser.new_page(viewport={"width": 1000, "height": 800})
                page.goto(host.origin + "/")
                ask(page, SHIPS)
                page.wait_for_selector(".rag-widget[data-state=done]", timeout=180_000)
                source = widget(page, "summary").filter(has_text="quillby.pdf").first
                with page.context.expect_page() as opened:
                    source.locator("a.open").click()
                view = opened.value
                view.wait_for_load_state("load")
                assert view.url.startswith(f"{api}/v1/documents/{doc.id}/view?")
                assert "token=" in view.url and "page=" in view.url
                check_marked_page(view, tmp_path / "source-view.png")
                view.close()
                page.close()
            finally:
                host.close()
    finally:
        sample_service.documents.delete(doc.id)


def check_marked_page(view: Any, shot: Path) -> None:
    """The page image loaded, the quote's first `<mark>` box lies inside the window, and the
    screenshot shows it: yellow over dark text within the box."""
    from PIL import Image

    assert view.locator("figure.page img").evaluate("i => i.complete && i.naturalWidth > 0")
    box = view.locator("mark#quote").bounding_box()
    size = view.viewport_size
    assert box is not None and box["width"] > 20 and box["height"] > 5, box
    assert box["x"] >= 0 and box["x"] + box["width"] <= size["width"], (box, size)
    assert box["y"] >= 0 and box["y"] + box["height"] <= size["height"], (box, size)
    view.screenshot(path=str(shot))
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "source-view.png").write_bytes(shot.read_bytes())
    with Image.open(shot) as image:
        assert image.size == (size["width"], size["height"])
        region = image.convert("RGB").crop((int(box["x"]), int(box["y"]),
                                            int(box["x"] + box["width"]),
                                            int(box["y"] + box["height"])))
        pixels = list(region.getdata())
    yellow = sum(r > 220 and g > 190 and r - b > 60 for r, g, b in pixels)
    dark = sum(r + g + b < 250 for r, g, b in pixels)
    assert yellow > len(pixels) // 3, "the quote is not highlighted"
    assert dark > 20, "no text under the highlight"
