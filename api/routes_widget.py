"""The web widget (`/widget.js`) and a demo page that uses it (`/`)."""

from __future__ import annotations

import html
from pathlib import Path

from litestar import MediaType, Response, get
from litestar.datastructures import State

from rag.settings import Settings

STATIC = Path(__file__).parent / "static"


@get("/widget.js", tags=["widget"], media_type="text/javascript; charset=utf-8")
async def widget_js() -> Response[bytes]:
    """The ask widget: `<script src=".../widget.js" data-api="..." data-key="..."></script>`.

    It adds an ask box (in a shadow DOM) after the script tag, streams answers in, and shows
    numbered citations that expand to the cited text. `data-api` defaults to the script's own
    origin; `data-key` should be an ask-only key, since every visitor can read it.
    """
    return Response((STATIC / "widget.js").read_bytes(),
                    media_type="text/javascript; charset=utf-8",
                    headers={"Cache-Control": "public, max-age=300"})


@get("/", tags=["widget"], media_type=MediaType.HTML, include_in_schema=True)
async def demo_page(state: State) -> Response[str]:
    """A demo page with the widget, asking this service (with RAG_WIDGET_KEY, if set)."""
    settings: Settings = state["settings"]
    page = (STATIC / "index.html").read_text(encoding="utf-8")
    page = page.replace("{{WIDGET_KEY}}", html.escape(settings.widget_key, quote=True))
    return Response(page, media_type=MediaType.HTML)
