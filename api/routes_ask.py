"""Asking: POST /v1/ask, answered as JSON or streamed as Server-Sent Events."""

from __future__ import annotations

from typing import Annotated, Any

import anyio.to_thread
from litestar import Request, Response, post
from litestar.exceptions import HTTPException
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import Example
from litestar.params import Body

from api.auth import owner_of, require_scope
from api.metrics import record_answer
from api.schemas import AnswerOut, AskIn, ErrorOut
from api.streaming import answer_events
from rag.conversations import Turn
from rag.service import AskRequest, RagService

ASK_BODY = Body(
    description="The question, and optionally how many sources, where to look and whether "
    "to stream.",
    examples=[
        Example(summary="A question answered as JSON",
                value={"question": "What is the default chunk size?", "top_k": 5}),
        Example(summary="Streamed, only in one collection",
                value={"question": "How are API keys sent?", "collection": "sample",
                       "stream": True}),
    ],
)
ASK_RESPONSES = {
    200: ResponseSpec(
        AnswerOut,
        description="The answer as JSON; with `stream: true` a `text/event-stream` of `token`, "
        "`citations`, `done` (and on failure `error`) events instead.",
    ),
    400: ResponseSpec(ErrorOut, description="Malformed JSON, or fields of the wrong type."),
    401: ResponseSpec(ErrorOut, description="No API key, or one that is not valid."),
    403: ResponseSpec(ErrorOut, description="The key lacks the `ask` scope."),
    415: ResponseSpec(ErrorOut, description="The body is not JSON."),
    422: ResponseSpec(
        ErrorOut,
        description="Empty question, question over the length limit, unknown collection, "
        "top_k out of range, or both `conversation` and `history` sent.",
    ),
    404: ResponseSpec(ErrorOut, description="The `conversation` is unknown (or not yours)."),
    429: ResponseSpec(ErrorOut, description="Too many requests for this key; see Retry-After."),
    503: ResponseSpec(ErrorOut, description="Models or index not loaded yet; see /ready."),
}


def require_json(request: Request[Any, Any, Any]) -> None:
    """Refuse a body that says it is something other than JSON (415, not a parse error)."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type and media_type != "application/json" and not media_type.endswith("+json"):
        raise HTTPException(
            status_code=415,
            detail=f"The body is {media_type}; this route takes JSON. "
            "Send it with Content-Type: application/json.",
        )


def to_request(data: AskIn, owner: str = "") -> AskRequest:
    return AskRequest(data.question, data.top_k, data.collection,
                      tuple(data.filters.document_ids), conversation_id=data.conversation,
                      history=tuple(Turn(t.question, t.answer) for t in data.history),
                      keep=not data.history, owner=owner)


@post(
    "/v1/ask",
    status_code=200,
    tags=["ask"],
    summary="Ask a question",
    guards=[require_scope("ask")],
    before_request=require_json,
    responses=ASK_RESPONSES,
)
async def ask(
    data: Annotated[AskIn, ASK_BODY], service: RagService, request: Request[Any, Any, Any]
) -> Response[Any]:
    """Answer a question from the indexed documents, citing the chunks it used, with verified
    quotes (`evidence`) and the check of each answer sentence.

    With `"stream": true` the answer arrives as Server-Sent Events: `token` events carry the
    text as it is generated, then `citations` (a JSON list), then `done` (JSON: the final
    `answer`, which replaces the streamed text when it is a quote, `mode`, `groundedness`,
    `evidence`, `sentences`, cached, usage, timings, `answer_id`, `conversation`). An error
    after the stream began arrives as an `error` event with the JSON error body. Closing the
    connection stops the generation. Needs a key with the `ask` scope.

    Every answer belongs to a conversation: send its `conversation` with the next question
    and the follow-up is retrieved and answered with the earlier turns (404 for an unknown
    id; an expired one starts afresh, said in `note`). A client that keeps the turns itself
    sends them as `history` instead.
    """
    asked = to_request(data, owner_of(request))
    if data.stream:
        return await answer_events(service, asked)
    answer = await anyio.to_thread.run_sync(service.ask, asked)
    record_answer(answer, stream=False)
    return Response(AnswerOut.of(answer))
