"""The OpenAI chat-completions protocol translated to and from the ask path.

In: the last message is the question; earlier user/assistant pairs are the history (the follow-up
rewrite and the prompt use them as on /v1/ask); system and developer messages are read past (the
service keeps its own system prompt); `stop`, `max_tokens` and `n` are checked (`chat_ask`).
Out: the answer as a `chat.completion` (`completion_of`) or, streamed, as `chat.completion.chunk`
events (`ChunkStream`, the event format of the one SSE bridge in `api.streaming`), with the
citations, evidence and check in `rag`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from litestar.response import ServerSentEventMessage

from api.auth import Caller
from api.openai_errors import invalid, openai_error
from api.openai_schemas import (
    HISTORY_ROLES,
    IGNORED_ROLES,
    ChatCompletionIn,
    ChatCompletionOut,
    ChatMessageIn,
    ChatMessageOut,
    ChatUsageOut,
    ChoiceOut,
    ModelOut,
    ModelsOut,
    RagOut,
)
from api.schemas import AskFilters, citations_of, evidence_of, short_answer_of
from api.streaming import EventFormat
from api.view_links import ViewLinks
from rag.ask.service import AskRequest, AskService
from rag.errors import NotFound
from rag.types import Answer, Turn, new_id

CREATED = int(time.time())  # when this process started: the model's `created`


@dataclass(frozen=True)
class ChatAsk:
    """A chat-completion request as an ask, with what shapes its completion."""

    request: AskRequest
    model: str
    stops: tuple[str, ...]
    limit: int  # the answer's token cap: `finish_reason` is "length" when it was reached
    include_usage: bool  # stream_options.include_usage: a last chunk with the usage
    links: ViewLinks  # makes the `view_url` of citations and evidence


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
            raise invalid(f"{where}.content[{n}] is a {part.get('type')!r} part; this service "
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
            raise invalid(f"{where} has the role {message.role!r}; this service reads "
                          "system, developer, user and assistant messages.", f"{where}.role")
        said.append((message.role, text_of(message, where)))
    if not any(role == "user" for role, _ in said):
        raise invalid("The messages hold no user message. Send the question as the last "
                      "message, with the role user.", "messages")
    if said[-1][0] != "user":
        raise invalid("The last message must be the user's question, not the assistant's.",
                      f"messages[{len(messages) - 1}].role")
    turns: list[Turn] = []
    for role, text in said[:-1]:
        if role == "user":
            turns.append(Turn(text, ""))
        elif turns and not turns[-1].answer:
            turns[-1] = Turn(turns[-1].question, text)
    return said[-1][1], tuple(turns)


def stops_of(data: ChatCompletionIn) -> tuple[str, ...]:
    """The stop strings: at most 4, none empty."""
    stops = [data.stop] if isinstance(data.stop, str) else list(data.stop or [])
    if len(stops) > 4 or not all(stops):
        raise invalid("`stop` takes at most 4 non-empty strings.", "stop")
    return tuple(stops)


def to_request(data: ChatCompletionIn, asking: AskService, caller: Caller) -> AskRequest:
    """The ask of a chat completion: 404 for another model, 400 for n other than 1."""
    if data.model != asking.model:
        raise NotFound(f"The model {data.model!r} does not exist here.",
                       f"Use {asking.model!r} (GET /v1/models).")
    if data.n not in (None, 1):
        raise invalid("Only n=1 is supported.", "n")
    question, history = question_and_history(data.messages)
    filters = data.filters or AskFilters()
    return AskRequest(question, data.top_k, data.collection, tuple(filters.document_ids),
                      history=history, owner=caller.owner,
                      max_new_tokens=data.max_completion_tokens or data.max_tokens,
                      answer_id=new_id("ans"), reader=caller.reader,
                      metadata=filters.metadata_filter())


def chat_ask(data: ChatCompletionIn, asking: AskService, caller: Caller,
             links: ViewLinks) -> ChatAsk:
    """The chat-completion request `data` of `caller`, checked and translated."""
    request = to_request(data, asking, caller)
    stops = stops_of(data)
    limit = asking.max_new_tokens(request.max_new_tokens)
    options = getattr(data, "stream_options", None) or {}
    include_usage = bool(isinstance(options, dict) and options.get("include_usage"))
    return ChatAsk(request, asking.model, stops, limit, include_usage, links)


# --- answers as completions ---------------------------------------------------------------


def cut_at_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    """`text` up to the first stop string, and whether one was found."""
    ends = [i for i in (text.find(s) for s in stops) if i >= 0]
    return (text[: min(ends)], True) if ends else (text, False)


def rag_of(answer: Answer, links: ViewLinks) -> RagOut:
    """What the service adds to the answer: sources, evidence (with their `view_url`), check."""
    return RagOut(answer_id=answer.id, answer=answer.text, **short_answer_of(answer),
                  mode=answer.mode,
                  groundedness=answer.groundedness, citations=citations_of(answer, links),
                  evidence=evidence_of(answer, links),
                  cached=answer.cached, history_turns=answer.history_turns)


def finish_reason(answer: Answer, limit: int, stopped: bool) -> Literal["stop", "length"]:
    """Why the answer ended: "length" when it used its whole token cap without a stop
    string, else "stop"."""
    return "length" if not stopped and answer.usage.completion_tokens >= limit else "stop"


def usage_of(answer: Answer) -> ChatUsageOut:
    """The answer's token counts in OpenAI's shape."""
    u = answer.usage
    return ChatUsageOut(prompt_tokens=u.prompt_tokens, completion_tokens=u.completion_tokens,
                        total_tokens=u.prompt_tokens + u.completion_tokens)


def completion_of(answer: Answer, chat: ChatAsk) -> ChatCompletionOut:
    """The whole answer as a `chat.completion`, cut at the first stop string."""
    text, stopped = cut_at_stop(answer.text, chat.stops)
    message = ChatMessageOut(content=text, rag=rag_of(answer, chat.links))
    finish = finish_reason(answer, chat.limit, stopped)
    return ChatCompletionOut(
        id=f"chatcmpl-{answer.id}", created=int(time.time()), model=answer.model,
        choices=[ChoiceOut(message=message, finish_reason=finish)], usage=usage_of(answer))


def models_of(model: str) -> ModelsOut:
    """The model list: the one model this service answers with."""
    return ModelsOut(data=[ModelOut(id=model, created=CREATED, owned_by="rag-service")])


class ChunkStream(EventFormat):
    """`chat.completion.chunk` events of one answer: a first chunk with the role, text deltas
    as they pass the check (a sentence at a time, or the quote that replaces an unsupported
    answer; held back while they could be the start of a stop string), then a final chunk with
    `rag`, and `data: [DONE]` last (after an error too). Joined, the deltas are the answer's
    text cut at the first stop string, as in the whole `chat.completion`."""

    def __init__(self, chat: ChatAsk) -> None:
        self.id = f"chatcmpl-{chat.request.answer_id}"
        self.created = int(time.time())
        self.model, self.stops, self.limit = chat.model, chat.stops, chat.limit
        self.include_usage = chat.include_usage
        self.links = chat.links
        self.text = ""  # everything let out so far
        self.sent = 0  # characters of it already sent
        self.stopped = False

    def chunk(self, delta: dict[str, Any], finish: str | None = None,
              **extra: Any) -> ServerSentEventMessage:
        """One `chat.completion.chunk` event with `delta`."""
        body = {"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                "model": self.model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra}
        return ServerSentEventMessage(data=json.dumps(body))

    def opening(self) -> Iterable[ServerSentEventMessage]:
        yield self.chunk({"role": "assistant", "content": ""})

    def piece(self, text: str) -> Iterable[ServerSentEventMessage]:
        """The delta of a piece let out (none while nothing can be sent yet). After a stop
        string nothing more is sent; the answer still finishes, so it is checked, cached and
        kept whole (feedback can name it)."""
        if self.stopped:
            return
        self.text += text
        kept, self.stopped = cut_at_stop(self.text, self.stops)
        hold = 0 if self.stopped else max((len(s) - 1 for s in self.stops), default=0)
        ready = max(self.sent, len(kept) - hold)
        if ready > self.sent:
            delta, self.sent = kept[self.sent : ready], ready
            yield self.chunk({"content": delta})

    def answer(self, answer: Answer) -> Iterator[ServerSentEventMessage]:
        """The held-back text, then the final chunk."""
        kept, _ = cut_at_stop(self.text, self.stops)
        rest = kept[self.sent :]
        if rest:
            yield self.chunk({"content": rest})
        extra = {"rag": rag_of(answer, self.links).model_dump()}
        yield self.chunk({}, finish_reason(answer, self.limit, self.stopped), **extra)
        if self.include_usage:
            body = {"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                    "model": self.model, "choices": [],
                    "usage": usage_of(answer).model_dump()}
            yield ServerSentEventMessage(data=json.dumps(body))

    def error(self, exc: Exception) -> ServerSentEventMessage:
        return ServerSentEventMessage(data=json.dumps(openai_error(exc)[1]))

    def closing(self) -> Iterable[ServerSentEventMessage]:
        yield ServerSentEventMessage(data="[DONE]")
