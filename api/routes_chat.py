"""The OpenAI chat-completions protocol over the ask path: POST /v1/chat/completions and
GET /v1/models, so chat clients and the OpenAI SDKs can hold a conversation over the documents.

The last message is the question; earlier user/assistant pairs are the history (the follow-up
rewrite and the prompt use them as on /v1/ask); system messages are read past (the service keeps
its own system prompt). Citations, evidence and the answer check ride along in `rag` on the
message, and on the final chunk of a stream. Errors on these routes use OpenAI's error shape.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any, Literal

import anyio.to_thread
from litestar import MediaType, Request, Response, Router, get, post
from litestar.exceptions import HTTPException, ValidationException
from litestar.openapi.datastructures import ResponseSpec
from litestar.response import ServerSentEvent, ServerSentEventMessage
from pydantic import BaseModel, ConfigDict, Field

from api.auth import owner_of, require_scope
from api.errors import describe
from api.metrics import record_answer, record_stream_error
from api.routes_ask import require_json
from api.schemas import CitationOut, QuoteOut, citations_of
from rag.errors import NotFound, RagError
from rag.service import AskRequest, RagService
from rag.stores.conversations import Turn, new_id
from rag.types import Answer

CREATED = int(time.time())  # when this process started: the model's `created`
HISTORY_ROLES = frozenset({"user", "assistant"})
IGNORED_ROLES = frozenset({"system", "developer"})
ERROR_TYPES = {400: "invalid_request_error", 401: "invalid_request_error",
               403: "permission_error", 404: "not_found_error", 413: "invalid_request_error",
               415: "invalid_request_error", 429: "rate_limit_error", 503: "server_error"}
_END = object()


# --- the OpenAI shapes --------------------------------------------------------------------


class ChatMessageIn(BaseModel):
    """A message: `content` is text, or a list of `{"type": "text", "text": ...}` parts."""

    model_config = ConfigDict(extra="allow")
    role: str = Field(description="system, developer, user or assistant; system and "
                      "developer messages are read past, other roles are refused (400).")
    content: str | list[dict[str, Any]] | None = None


class ChatCompletionIn(BaseModel):
    """OpenAI's chat-completion request; fields it has and this service does not use (`n` of
    1, `top_p`, `user`, ...) are accepted and read past. `top_k` and `collection` are extras."""

    model_config = ConfigDict(extra="allow")
    model: str = Field(description="The id GET /v1/models lists.")
    messages: list[ChatMessageIn] = Field(min_length=1, description="The conversation; the "
                                          "last is the question and must be the user's.")
    stream: bool = Field(False, description="Answer as `chat.completion.chunk` events.")
    max_tokens: int | None = Field(None, ge=1, description="Cap on the answer's tokens (never "
                                   "above the service's RAG_MAX_NEW_TOKENS).")
    max_completion_tokens: int | None = Field(None, ge=1, description="Same as max_tokens.")
    temperature: float | None = Field(None, ge=0.0, le=2.0, description="Accepted; answers are "
                                      "decoded greedily so they can be cached and checked.")
    stop: str | list[str] | None = Field(None, description="Up to 4 strings that end the answer.")
    n: int | None = Field(None, description="Only 1 is supported.")
    top_k: int | None = Field(None, ge=1, le=50, description="Sources to retrieve (extra).")
    collection: str | None = Field(None, description="Search only this collection (extra).")


class RagOut(BaseModel):
    """What the service adds to an answer: its sources, evidence and check."""

    answer_id: str = Field(description="Rate the answer with POST /v1/feedback.")
    answer: str = Field(description="The checked answer (a quote may replace what was "
                        "streamed).")
    mode: Literal["generated", "quote", "abstained"]
    groundedness: float
    citations: list[CitationOut]
    evidence: list[QuoteOut]
    cached: bool
    history_turns: int = Field(description="Earlier turns the prompt held.")


class ChatMessageOut(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str
    rag: RagOut


class ChoiceOut(BaseModel):
    index: int = 0
    message: ChatMessageOut
    finish_reason: Literal["stop", "length"]


class ChatUsageOut(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatCompletionOut(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChoiceOut]
    usage: ChatUsageOut


class ModelOut(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelsOut(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelOut]


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class OpenAIErrorOut(BaseModel):
    """OpenAI's error shape, used on /v1/chat/completions and /v1/models."""

    error: OpenAIErrorDetail


# --- errors -------------------------------------------------------------------------------


def openai_error(exc: Exception) -> tuple[int, dict[str, Any]]:
    """Status and OpenAI-shaped body of any error (422 is 400 here, as OpenAI answers)."""
    status, body = describe(exc)
    status = 400 if status == 422 else status
    message = " ".join(str(body[k]) for k in ("message", "hint") if body.get(k))
    details = body.get("details")
    param = None
    if isinstance(details, list) and details and isinstance(details[0], dict):
        param = details[0].get("param") or details[0].get("key")
    code = "invalid_api_key" if status == 401 else str(body["error"])
    kind = ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return status, {"error": {"message": message, "type": kind,
                              "param": None if param is None else str(param), "code": code}}


def _error_response(_: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    status, body = openai_error(exc)
    headers = dict(exc.headers or {}) if isinstance(exc, HTTPException) else {}
    if status == 429 and "Retry-After" not in headers:
        headers["Retry-After"] = str(max(1, int(headers.get("RateLimit-Reset", "60"))))
    return Response(body, status_code=status, media_type=MediaType.JSON, headers=headers)


def _invalid(message: str, param: str) -> ValidationException:
    return ValidationException(detail=message, extra=[{"param": param}])


# --- messages to an ask -------------------------------------------------------------------


def text_of(message: ChatMessageIn, where: str) -> str:
    """A message's text; content parts other than text cannot be read."""
    content = message.content
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    texts = []
    for n, part in enumerate(content):
        if part.get("type") != "text" or not isinstance(part.get("text"), str):
            raise _invalid(f"{where}.content[{n}] is a {part.get('type')!r} part; this service "
                           "reads text only. Send the content as text.", f"{where}.content")
        texts.append(part["text"])
    return "\n".join(texts)


def question_and_history(messages: Sequence[ChatMessageIn]) -> tuple[str, tuple[Turn, ...]]:
    """The last user message, and the user/assistant pairs before it as turns."""
    said: list[tuple[str, str]] = []
    for n, message in enumerate(messages):
        where = f"messages[{n}]"
        if message.role in IGNORED_ROLES:
            continue
        if message.role not in HISTORY_ROLES:
            raise _invalid(f"{where} has the role {message.role!r}; this service reads "
                           "system, developer, user and assistant messages.", f"{where}.role")
        said.append((message.role, text_of(message, where)))
    if not any(role == "user" for role, _ in said):
        raise _invalid("The messages hold no user message. Send the question as the last "
                       "message, with the role user.", "messages")
    if said[-1][0] != "user":
        raise _invalid("The last message must be the user's question, not the assistant's.",
                       f"messages[{len(messages) - 1}].role")
    turns: list[Turn] = []
    for role, text in said[:-1]:
        if role == "user":
            turns.append(Turn(text, ""))
        elif turns and not turns[-1].answer:
            turns[-1] = Turn(turns[-1].question, text)
    return said[-1][1], tuple(turns)


def stops_of(data: ChatCompletionIn) -> tuple[str, ...]:
    stops = [data.stop] if isinstance(data.stop, str) else list(data.stop or [])
    if len(stops) > 4 or not all(stops):
        raise _invalid("`stop` takes at most 4 non-empty strings.", "stop")
    return tuple(stops)


def to_request(data: ChatCompletionIn, service: RagService, owner: str) -> AskRequest:
    if data.model != service.generator.name:
        raise NotFound(f"The model {data.model!r} does not exist here.",
                       f"Use {service.generator.name!r} (GET /v1/models).")
    if data.n not in (None, 1):
        raise _invalid("Only n=1 is supported.", "n")
    question, history = question_and_history(data.messages)
    return AskRequest(question, data.top_k, data.collection, history=history, owner=owner,
                      max_new_tokens=data.max_completion_tokens or data.max_tokens,
                      answer_id=new_id("ans"))


# --- answers as completions ---------------------------------------------------------------


def cut_at_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    """`text` up to the first stop string, and whether one was found."""
    ends = [i for i in (text.find(s) for s in stops) if i >= 0]
    return (text[: min(ends)], True) if ends else (text, False)


def rag_of(answer: Answer) -> RagOut:
    return RagOut(answer_id=answer.id, answer=answer.text, mode=answer.mode,
                  groundedness=answer.groundedness, citations=citations_of(answer),
                  evidence=[QuoteOut(**{**vars(q), "title_path": list(q.title_path)})
                            for q in answer.evidence],
                  cached=answer.cached, history_turns=answer.history_turns)


def finish_reason(answer: Answer, limit: int, stopped: bool) -> Literal["stop", "length"]:
    return "length" if not stopped and answer.usage.completion_tokens >= limit else "stop"


def usage_of(answer: Answer) -> ChatUsageOut:
    u = answer.usage
    return ChatUsageOut(prompt_tokens=u.prompt_tokens, completion_tokens=u.completion_tokens,
                        total_tokens=u.prompt_tokens + u.completion_tokens)


def completion_of(answer: Answer, stops: Sequence[str], limit: int) -> ChatCompletionOut:
    text, stopped = cut_at_stop(answer.text, stops)
    message = ChatMessageOut(content=text, rag=rag_of(answer))
    return ChatCompletionOut(
        id=f"chatcmpl-{answer.id}", created=int(time.time()), model=answer.model,
        choices=[ChoiceOut(message=message, finish_reason=finish_reason(answer, limit, stopped))],
        usage=usage_of(answer))


class ChunkStream:
    """`chat.completion.chunk` events of one answer: text deltas as generated (held back
    while they could be the start of a stop string), then a final chunk with `rag`."""

    def __init__(self, request: AskRequest, model: str, stops: Sequence[str], limit: int,
                 include_usage: bool) -> None:
        self.id = f"chatcmpl-{request.answer_id}"
        self.created = int(time.time())
        self.model, self.stops, self.limit = model, tuple(stops), limit
        self.include_usage = include_usage
        self.text = ""  # everything generated so far
        self.sent = 0  # characters of it already sent
        self.stopped = False

    def chunk(self, delta: dict[str, Any], finish: str | None = None,
              **extra: Any) -> ServerSentEventMessage:
        body = {"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                "model": self.model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra}
        return ServerSentEventMessage(data=json.dumps(body))

    def piece(self, piece: str) -> ServerSentEventMessage | None:
        """The delta of a generated piece (None while nothing can be sent yet)."""
        self.text += piece
        kept, self.stopped = cut_at_stop(self.text, self.stops)
        hold = 0 if self.stopped else max((len(s) - 1 for s in self.stops), default=0)
        ready = max(self.sent, len(kept) - hold)
        if ready <= self.sent:
            return None
        delta, self.sent = kept[self.sent : ready], ready
        return self.chunk({"content": delta})

    def finish(self, answer: Answer) -> Iterator[ServerSentEventMessage]:
        """The held-back text, a checked quote that replaced the answer, the final chunk."""
        kept, _ = cut_at_stop(self.text, self.stops)
        rest = kept[self.sent :]
        if answer.mode == "quote" and not self.stopped:
            rest += f"\n\nFrom the sources: {answer.text}"
        if rest:
            yield self.chunk({"content": rest})
        extra = {"rag": rag_of(answer).model_dump()}
        yield self.chunk({}, finish_reason(answer, self.limit, self.stopped), **extra)
        if self.include_usage:
            body = {"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                    "model": self.model, "choices": [],
                    "usage": usage_of(answer).model_dump()}
            yield ServerSentEventMessage(data=json.dumps(body))


async def _next(items: Iterator[str | Answer]) -> str | Answer | object:
    return await anyio.to_thread.run_sync(next, items, _END)


async def completion_events(
    service: RagService, request: AskRequest, stream: ChunkStream
) -> ServerSentEvent:
    """Start answering; errors before the first piece are plain HTTP errors."""
    stop = threading.Event()
    items = service.ask_stream(request, stop)
    try:
        first = await _next(items)
    except Exception:
        items.close()  # type: ignore[attr-defined]
        raise
    return ServerSentEvent(_events(items, first, stop, stream))


async def _events(
    items: Iterator[str | Answer], item: str | Answer | object, stop: threading.Event,
    stream: ChunkStream,
) -> AsyncIterator[ServerSentEventMessage]:
    try:
        yield stream.chunk({"role": "assistant", "content": ""})
        while item is not _END:
            if isinstance(item, Answer):
                record_answer(item, stream=True)
                for final in stream.finish(item):
                    yield final
            elif isinstance(item, str) and not stream.stopped:
                # After a stop string nothing more is sent; the answer still finishes, so it
                # is checked, cached and kept whole (feedback can name it).
                delta = stream.piece(item)
                if delta is not None:
                    yield delta
            item = await _next(items)
    except Exception as exc:  # the status line is gone: the error travels as an event
        record_stream_error(exc)
        yield ServerSentEventMessage(data=json.dumps(openai_error(exc)[1]))
    finally:
        stop.set()
        items.close()  # type: ignore[attr-defined]
    yield ServerSentEventMessage(data="[DONE]")


# --- routes -------------------------------------------------------------------------------

ERRORS = {
    400: ResponseSpec(OpenAIErrorOut, description="Malformed JSON or fields; no user message, "
                      "an unknown role, a content part that is not text, an empty question."),
    401: ResponseSpec(OpenAIErrorOut, description="No API key, or one that is not valid."),
    403: ResponseSpec(OpenAIErrorOut, description="The key lacks the `ask` scope."),
    404: ResponseSpec(OpenAIErrorOut, description="The model is not the one this service has."),
    429: ResponseSpec(OpenAIErrorOut, description="Too many requests; see Retry-After."),
    503: ResponseSpec(OpenAIErrorOut, description="Not loaded yet; see /ready."),
}


@post("/chat/completions", status_code=200, tags=["openai"], guards=[require_scope("ask")],
      before_request=require_json,
      responses={200: ResponseSpec(ChatCompletionOut, description="The completion; with "
                                   "`stream: true` `chat.completion.chunk` events, then "
                                   "`data: [DONE]`."), **ERRORS})
async def chat_completions(
    data: ChatCompletionIn, service: RagService, request: Request[Any, Any, Any]
) -> Response[Any]:
    """OpenAI-compatible chat completion over the documents: the last user message is the
    question, earlier turns the conversation. The answer cites `[n]`; `message.rag` (or the
    final chunk's `rag`) holds the citations, evidence and check. Needs the `ask` scope, sent as
    `Authorization: Bearer <key>`."""
    asked = to_request(data, service, owner_of(request))
    stops = stops_of(data)
    limit = min(asked.max_new_tokens or service.settings.max_new_tokens,
                service.settings.max_new_tokens)
    if data.stream:
        options = getattr(data, "stream_options", None) or {}
        chunks = ChunkStream(asked, service.generator.name, stops, limit,
                             bool(isinstance(options, dict) and options.get("include_usage")))
        return await completion_events(service, asked, chunks)
    answer = await anyio.to_thread.run_sync(service.ask, asked)
    record_answer(answer, stream=False)
    return Response(completion_of(answer, stops, limit))


@get("/models", tags=["openai"], guards=[require_scope("ask")], responses=ERRORS)
async def list_models(service: RagService) -> ModelsOut:
    """The model to name in chat completions (the service's generator)."""
    return ModelsOut(data=[ModelOut(id=service.generator.name, created=CREATED,
                                    owned_by="rag-service")])


ROUTER = Router(
    path="/v1", route_handlers=[chat_completions, list_models],
    exception_handlers={RagError: _error_response, ValidationException: _error_response,
                        HTTPException: _error_response, Exception: _error_response},
)
