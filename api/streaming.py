"""An answer as Server-Sent Events, generated off the event loop.

Events: `token` (data: a piece of answer text), `citations` (data: JSON list of citations),
`done` (data: JSON with the final answer, mode, groundedness, evidence, sentences, cached, usage,
timings, model, index_version; the final answer replaces the streamed text) and, if the answer fails
after it started, `error` (data: the JSON error body). Errors before the first token are
plain HTTP errors instead, so clients see a 4xx/5xx status.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import AsyncIterator, Generator, Iterator

import anyio.to_thread
from litestar.response import ServerSentEvent, ServerSentEventMessage

from api.errors import describe
from api.metrics import record_answer, record_stream_error
from api.schemas import DoneOut, citations_of
from rag.service import AskRequest, RagService
from rag.types import Answer

log = logging.getLogger(__name__)

Item = str | Answer
_END = object()


async def _next(items: Iterator[Item]) -> Item | object:
    """The next piece, computed in a worker thread so the event loop keeps serving."""
    return await anyio.to_thread.run_sync(next, items, _END)


async def answer_events(service: RagService, request: AskRequest) -> ServerSentEvent:
    """Start answering; the response streams once the first piece (or an error) is known."""
    stop = threading.Event()
    items = service.ask_stream(request, stop)
    try:
        first = await _next(items)
    except Exception:
        _close(items)
        raise
    return ServerSentEvent(_events(items, first, stop))


async def _events(
    items: Iterator[Item], item: Item | object, stop: threading.Event
) -> AsyncIterator[ServerSentEventMessage]:
    try:
        while item is not _END:
            if isinstance(item, Answer):
                record_answer(item, stream=True)
                data = [c.model_dump() for c in citations_of(item)]
                yield ServerSentEventMessage(event="citations", data=json.dumps(data))
                yield ServerSentEventMessage(event="done",
                                             data=DoneOut.of(item).model_dump_json())
            elif isinstance(item, str):
                yield ServerSentEventMessage(event="token", data=item)
            item = await _next(items)
    except Exception as exc:  # the status line is gone: the error travels as an event
        record_stream_error(exc)
        status, body = describe(exc)
        if status >= 500 and status != 503:
            log.exception("answer failed mid-stream", exc_info=exc)
        yield ServerSentEventMessage(event="error", data=json.dumps(body))
    finally:
        # Set when the client went away (Litestar cancels the stream): generation stops at the
        # next token. After a finished answer it changes nothing.
        stop.set()
        _close(items)


def _close(items: Iterator[Item]) -> None:
    """Run the generator's clean-up now rather than whenever it is garbage-collected."""
    if isinstance(items, Generator):
        items.close()
