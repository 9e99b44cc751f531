"""In the real browser: a document whose name and text carry markup and scripts is shown by
the widget as text, never as HTML (nothing injected, nothing run)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from api.app import create_app
from rag.service import RagService
from rag.settings import Settings
from tests.api.helpers import app_settings, free_port, live_server
from tests.api.test_widget_browser import HOST_PAGE, WIDGET_KEY, HostPages, ask, widget
from tests.api.test_widget_browser import browser as browser  # noqa: PLC0414 - the fixture

pytestmark = [pytest.mark.browser, pytest.mark.slow]

# `rag ingest` keeps a file's own name: only uploads over HTTP are sanitized.
NAME = '<img src=x onerror="window.__pwned=\'name\'">.txt'
TEXT = ("The Fenwick tide gauge reads 4.1 metres at noon. "
        "<script>window.__pwned='text'</script><b id=\"injected\">bold</b>"
        "<img src=x onerror=\"window.__pwned='text-img'\">")


@pytest.fixture(scope="module")
def hostile_service(tmp_path_factory: pytest.TempPathFactory, embedder: Any, generator: Any
                    ) -> Iterator[RagService]:
    root = tmp_path_factory.mktemp("widget-hostile")
    settings = Settings(data_dir=root / "data", max_new_tokens=24, top_k=2)
    service = RagService(settings, embedder=embedder, generator=generator)
    service.load()
    (root / "gauge.txt").write_text(TEXT)
    service.documents.ingest_file(root / "gauge.txt", filename=NAME)
    yield service
    service.store.close()


def test_script_bearing_names_and_text_render_as_text(hostile_service: RagService,
                                                      browser: Any) -> None:
    port = free_port()
    origin = f"http://127.0.0.1:{port}"
    settings = app_settings(hostile_service, api_keys={WIDGET_KEY: ["ask"]},
                            cors_origins=[origin])
    with live_server(create_app(settings, service=hostile_service)) as api:
        host = HostPages({"/": HOST_PAGE.format(api=api, key=WIDGET_KEY)}, port)
        try:
            page = browser.new_page()
            dialogs: list[str] = []
            page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
            page.goto(host.origin + "/")
            ask(page, "What does the Fenwick tide gauge read at noon?")
            page.wait_for_selector(".rag-widget[data-state=done]", timeout=180_000)
            widget(page, "summary").first.click()

            summary = widget(page, "summary").first.inner_text()
            assert NAME in summary, summary  # the markup is shown, character for character
            quote = widget(page, "details[open] blockquote").inner_text()
            assert "<script>window.__pwned='text'</script>" in quote, quote
            assert '<b id="injected">bold</b>' in quote
            assert widget(page, "img").count() == 0  # no element was made from either
            assert widget(page, "#injected").count() == 0 and widget(page, "b").count() == 0
            assert widget(page, "script").count() == 0
            page.wait_for_timeout(300)  # an onerror handler would have fired by now
            assert page.evaluate("window.__pwned") is None and dialogs == []
            page.close()
        finally:
            host.close()
