"""Asking: POST /v1/ask, answered as JSON or streamed as Server-Sent Events."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Request, Response, post
from litestar.exceptions import HTTPException, ValidationException
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import (
    Example,
    OpenAPIType,
    Reference,
    Schema,
)
from litestar.params import Body

from api.auth import Caller, caller_of, require_scope
from api.errors import api_errors
from api.schemas import AnswerOut, AskIn, DoneOut
from api.streaming import AskEvents, answer_events, streamed_operation, whole_answer
from api.view_links import ViewLinks
from rag.ask.service import AskRequest, AskService
from rag.errors import InvalidInput, NotFound
from rag.types import Turn

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
    **api_errors("ask", {
        400: ("Malformed JSON, fields of the wrong type (e.g. `stream: 0`) or unknown fields, or "
              "a metadata filter with an unknown operator or a value of the wrong type.",
              ValidationException("Validation failed for POST /v1/ask", extra=[
                  {"message": "Input should be a valid boolean", "key": "stream",
                   "source": "body"}])),
        404: ("The collection holds no documents, or the `conversation` is unknown (or not "
              "yours).",
              NotFound("Collection 'manuals' does not exist.",
                       "Leave it out to search everything, or upload documents into it first.")),
        413: ("The body is over the request size limit.",
              HTTPException(status_code=413, detail="Request Entity Too Large")),
        415: ("The body is not JSON.",
              HTTPException(status_code=415, detail="The body is text/plain; this route takes "
                            "JSON. Send it with Content-Type: application/json.")),
        422: ("Empty question, or one over the length limit or the model's context window, or "
              "both `conversation` and `history` sent.",
              InvalidInput("The question is empty.", "Send a question with some words.")),
    }),
}


def _event(name: str, description: str, data: Schema | Reference | None = None) -> Schema:
    """One Server-Sent Event: its name and its data (JSON of `data`'s schema, if given)."""
    payload = Schema(type=OpenAPIType.STRING, description=description)
    if data is not None:
        payload.content_media_type, payload.content_schema = "application/json", data
    return Schema(type=OpenAPIType.OBJECT, required=["event", "data"],
                  properties={"event": Schema(const=name), "data": payload})


def _ref(name: str) -> Reference:
    return Reference(ref=f"#/components/schemas/{name}")


ASK_EVENTS = Schema(one_of=[
    _event("token", "A piece of the answer text once it passed the check: a sentence, or the "
           "quote or abstention that replaces an unsupported answer. Joined, the tokens are "
           "the final answer."),
    _event("citations", "The numbered sources (JSON list).",
           Schema(type=OpenAPIType.ARRAY, items=_ref("CitationOut"))),
    _event("done", "The final answer, its check and evidence, usage and timings (JSON).",
           Schema(type=OpenAPIType.OBJECT, required=sorted(DoneOut.model_fields))),
    _event("error", "The answer failed after the stream began (JSON error body).",
           _ref("ErrorOut")),
], description="Server-Sent Events: token..., citations, done; or error.")



def require_json(request: Request[Any, Any, Any]) -> None:
    """Refuse a body that says it is something other than JSON (415, not a parse error)."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type and media_type != "application/json" and not media_type.endswith("+json"):
        raise HTTPException(
            status_code=415,
            detail=f"The body is {media_type}; this route takes JSON. "
            "Send it with Content-Type: application/json.",
        )


def to_request(data: AskIn, caller: Caller) -> AskRequest:
    """The engine's ask for `data` from `caller`: what it may read, narrowed by its filters."""
    return AskRequest(data.question, data.top_k, data.collection,
                      tuple(data.filters.document_ids), conversation_id=data.conversation,
                      history=tuple(Turn(t.question, t.answer) for t in data.history),
                      keep=not data.history, owner=caller.owner, reader=caller.reader,
                      metadata=data.filters.metadata_filter())


@post(
    "/v1/ask",
    status_code=200,
    tags=["ask"],
    summary="Ask a question",
    guards=[require_scope("ask")],
    before_request=require_json,
    responses=ASK_RESPONSES,
    operation_class=streamed_operation(ASK_EVENTS),
)
async def ask(
    data: Annotated[AskIn, ASK_BODY], asking: AskService, view_links: ViewLinks,
    request: Request[Any, Any, Any],
) -> Response[Any]:
    """Answer a question from the indexed documents, citing the chunks it used, with verified
    quotes (`evidence`) and the check of each answer sentence.

    With `"stream": true` the answer arrives as Server-Sent Events: `token` events carry the
    text a sentence at a time, each once it passed the check (a rejected sentence is never
    sent; when none passed, the quote or abstention that answers instead), then `citations` (a
    JSON list), then `done` (JSON: the final `answer`, which is the tokens joined, `mode`,
    `groundedness`, `evidence`, `sentences`, cached, usage, timings with `first_sentence_ms`,
    `answer_id`, `conversation`). Every citation and quote has a `view_url`: a page that
    shows it marked in its source (opens in a browser tab, no key needed). An error
    after the stream began arrives as an `error` event with the JSON error body. Closing the
    connection stops the generation. Needs a key with the `ask` scope.

    Every answer belongs to a conversation: send its `conversation` with the next question
    and the follow-up is retrieved and answered with the earlier turns (404 for an unknown
    id; an expired one starts afresh, said in `note`). A client that keeps the turns itself
    sends them as `history` instead.
    """
    asked = to_request(data, caller_of(request))
    if data.stream:
        return await answer_events(asking, asked, AskEvents(view_links))
    return Response(AnswerOut.of(await whole_answer(asking, asked), view_links))
