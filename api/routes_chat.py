"""The OpenAI chat-completions protocol over the ask path: POST /v1/chat/completions and
GET /v1/models, so chat clients and the OpenAI SDKs can hold a conversation over the documents.

The shapes are in `api.openai_schemas`, the translation of messages and answers in
`api.openai_chat`, the OpenAI-shaped errors in `api.openai_errors`; streaming goes through the one
SSE bridge, `api.streaming`.
"""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, Router, get, post
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import OpenAPIType, Schema

from api.auth import caller_of, require_scope
from api.openai_chat import ChunkStream, chat_ask, completion_of, models_of
from api.openai_errors import OPENAI_EXCEPTION_HANDLERS
from api.openai_schemas import ChatCompletionIn, ChatCompletionOut, ModelsOut, OpenAIErrorOut
from api.routes_ask import require_json
from api.streaming import answer_events, streamed_operation, whole_answer
from api.view_links import ViewLinks
from rag.ask.service import AskService

ERRORS = {
    400: ResponseSpec(OpenAIErrorOut, description="Malformed JSON or fields; no user message, "
                      "an unknown role, a content part that is not text, an empty question."),
    401: ResponseSpec(OpenAIErrorOut, description="No API key, or one that is not valid."),
    403: ResponseSpec(OpenAIErrorOut, description="The key lacks the `ask` scope."),
    404: ResponseSpec(OpenAIErrorOut, description="The model is not the one this service has."),
    429: ResponseSpec(OpenAIErrorOut, description="Too many requests; see Retry-After."),
    503: ResponseSpec(OpenAIErrorOut, description="Not loaded yet; see /ready."),
}


# One event: a `data:` line only (no `event:` name), as OpenAI streams.
CHUNK_EVENTS = Schema(type=OpenAPIType.OBJECT, required=["data"], properties={
    "data": Schema(type=OpenAPIType.STRING, description="A `chat.completion.chunk` (JSON; the "
                   "last one has `finish_reason` and `rag`), then the text `[DONE]`.")},
    description="Server-Sent Events: `chat.completion.chunk`..., then `[DONE]`.")


@post("/chat/completions", status_code=200, tags=["openai"],
      operation_class=streamed_operation(CHUNK_EVENTS), guards=[require_scope("ask")],
      before_request=require_json,
      responses={200: ResponseSpec(ChatCompletionOut, description="The completion; with "
                                   "`stream: true` `chat.completion.chunk` events, then "
                                   "`data: [DONE]`."), **ERRORS})
async def chat_completions(
    data: ChatCompletionIn, asking: AskService, view_links: ViewLinks,
    request: Request[Any, Any, Any],
) -> Response[Any]:
    """OpenAI-compatible chat completion over the documents: the last user message is the
    question, earlier turns the conversation. The answer cites `[n]`; `message.rag` (or the
    final chunk's `rag`) holds the citations, evidence and check. Needs the `ask` scope, sent as
    `Authorization: Bearer <key>`."""
    chat = chat_ask(data, asking, caller_of(request), view_links)
    if data.stream:
        return await answer_events(asking, chat.request, ChunkStream(chat))
    return Response(completion_of(await whole_answer(asking, chat.request), chat))


@get("/models", tags=["openai"], guards=[require_scope("ask")], responses=ERRORS)
async def list_models(asking: AskService) -> ModelsOut:
    """The model to name in chat completions (the service's generator)."""
    return models_of(asking.model)


ROUTER = Router(path="/v1", route_handlers=[chat_completions, list_models],
                exception_handlers=OPENAI_EXCEPTION_HANDLERS)
