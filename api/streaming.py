"""Answers off the event loop: whole (`whole_answer`) or as Server-Sent Events (`answer_events`,
the one bridge from `AskService.ask_stream` to an event stream, used by /v1/ask and by
/v1/chat/completions).

The bridge runs the answer in a worker thread, pulls its first piece before the response starts
(so errors before the first token are plain HTTP errors, with a 4xx/5xx status), stops the
generation when the client goes away, and turns an error after the stream began into an error
event. How pieces and the answer become events is the route's `EventFormat`:

- `AskEvents` (/v1/ask): `token` (data: a piece of answer text that passed the check: a
  sentence, or the quote or abstention that replaces an unsupported answer; joined, the tokens
  are the final answer), `citations` (data: JSON list of citations), `done` (data: JSON with the
  final answer, mode, groundedness, evidence, sentences, cached, usage, timings, model,
  index_version) and, if the answer fails after it started, `error` (data: the JSON error
  body).
- `api.openai_chat.ChunkStream` (/v1/chat/completions): OpenAI's `chat.completion.chunk` events.
"""

from __future__ import annotations

import json
import logging
import threading
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Generator, Iterable, Iterator
from dataclasses import dataclass

import anyio.to_thread
from litestar.openapi.spec import OpenAPIMediaType, OpenAPIResponse, Operation, Schema
from litestar.response import ServerSentEvent, ServerSentEventMessage

from api.errors import describe
from api.metrics import record_answer, record_stream_error
from api.schemas import DoneOut, citations_of
from api.view_links import ViewLinks
from rag.ask.service import AskRequest, AskService
from rag.types import Answer

log = logging.getLogger(__name__)

Item = str | Answer
_END = object()


class EventFormat(ABC):
    """How one streamed answer becomes Server-Sent Events; by default nothing opens or closes
    the stream."""

    def opening(self) -> Iterable[ServerSentEventMessage]:
        """Events sent before the first piece."""
        return ()

    @abstractmethod
    def piece(self, text: str) -> Iterable[ServerSentEventMessage]:
        """Events for a piece of generated text."""

    @abstractmethod
    def answer(self, answer: Answer) -> Iterable[ServerSentEventMessage]:
        """Events for the finished answer."""

    @abstractmethod
    def error(self, exc: Exception) -> ServerSentEventMessage:
        """The event for an error after the stream began."""

    def closing(self) -> Iterable[ServerSentEventMessage]:
        """Events sent last, after the answer or an error."""
        return ()


class AskEvents(EventFormat):
    """The /v1/ask events: token..., citations, done; or error (citations and evidence with
    the `view_url` links makes)."""

    def __init__(self, links: ViewLinks) -> None:
        self.links = links

    def piece(self, text: str) -> Iterable[ServerSentEventMessage]:
        yield ServerSentEventMessage(event="token", data=text)

    def answer(self, answer: Answer) -> Iterable[ServerSentEventMessage]:
        data = [c.model_dump() for c in citations_of(answer, self.links)]
        yield ServerSentEventMessage(event="citations", data=json.dumps(data))
        done = DoneOut.of(answer, self.links)
        yield ServerSentEventMessage(event="done", data=done.model_dump_json())

    def error(self, exc: Exception) -> ServerSentEventMessage:
        return ServerSentEventMessage(event="error", data=json.dumps(describe(exc)[1]))


async def whole_answer(asking: AskService, request: AskRequest) -> Answer:
    """The whole answer, computed in a worker thread so the event loop keeps serving."""
    answer = await anyio.to_thread.run_sync(asking.ask, request)
    record_answer(answer, stream=False)
    return answer


async def answer_events(
    asking: AskService, request: AskRequest, events: EventFormat
) -> ServerSentEvent:
    """Start answering; the response streams once the first piece (or an error) is known."""
    stop = threading.Event()
    items = asking.ask_stream(request, stop)
    try:
        first = await _next(items)
    except Exception:
        _close(items)
        raise
    return ServerSentEvent(_events(items, first, stop, events))


async def _next(items: Iterator[Item]) -> Item | object:
    """The next piece, computed in a worker thread so the event loop keeps serving."""
    return await anyio.to_thread.run_sync(next, items, _END)


async def _events(
    items: Iterator[Item], item: Item | object, stop: threading.Event, events: EventFormat
) -> AsyncIterator[ServerSentEventMessage]:
    try:
        for message in events.opening():
            yield message
        while item is not _END:
            if isinstance(item, Answer):
                record_answer(item, stream=True)
                for message in events.answer(item):
                    yield message
            elif isinstance(item, str):
                for message in events.piece(item):
                    yield message
            item = await _next(items)
    except Exception as exc:  # the status line is gone: the error travels as an event
        record_stream_error(exc)
        status, _ = describe(exc)
        if status >= 500 and status != 503:
            log.exception("answer failed mid-stream", exc_info=exc)
        yield events.error(exc)
    finally:
        # Set when the client went away (Litestar cancels the stream): generation stops at the
        # next token. After a finished answer it changes nothing.
        stop.set()
        _close(items)
    for message in events.closing():
        yield message


def _close(items: Iterator[Item]) -> None:
    """Run the generator's clean-up now rather than whenever it is garbage-collected."""
    if isinstance(items, Generator):
        items.close()


def streamed_operation(events: Schema) -> type[Operation]:
    """The OpenAPI operation of a route whose 200 response is JSON or, with `stream: true`, a
    `text/event-stream` of `events` (Litestar documents one content type per response)."""

    @dataclass
    class StreamedOperation(Operation):
        def __post_init__(self) -> None:
            ok = self.responses.get("200") if self.responses else None
            if isinstance(ok, OpenAPIResponse) and ok.content is not None:
                ok.content["text/event-stream"] = OpenAPIMediaType(schema=events)

    return StreamedOperation
