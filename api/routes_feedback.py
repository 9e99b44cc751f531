"""Feedback on answers: POST /v1/feedback. `rag eval export-feedback` turns it into a suite."""

from __future__ import annotations

from typing import Literal

import anyio.to_thread
from litestar import post
from litestar.openapi.datastructures import ResponseSpec
from pydantic import BaseModel, ConfigDict, Field

from api.auth import require_scope
from api.routes_ask import require_json
from api.schemas import ErrorOut
from rag.service import RagService

CHAT_PREFIX = "chatcmpl-"


class FeedbackIn(BaseModel):
    """A rating of one answer."""

    model_config = ConfigDict(extra="forbid")
    answer_id: str = Field(description="The answer's `answer_id` (or a chat completion's `id`).",
                           min_length=1, max_length=200)
    rating: Literal["up", "down"] = Field(description="up: right; down: wrong or unhelpful.")
    comment: str = Field("", max_length=4000, description="What was right or wrong.")
    expected_answer: str = Field("", max_length=4000,
                                 description="The answer it should have given.")


class FeedbackOut(BaseModel):
    id: str = Field(description="The feedback's id.")
    answer_id: str
    rating: Literal["up", "down"]


@post("/v1/feedback", status_code=201, tags=["feedback"], guards=[require_scope("ask")],
      before_request=require_json, responses={
          400: ResponseSpec(ErrorOut, description="Malformed JSON, or fields of the wrong type."),
          401: ResponseSpec(ErrorOut, description="No API key, or one that is not valid."),
          403: ResponseSpec(ErrorOut, description="The key lacks the `ask` scope."),
          404: ResponseSpec(ErrorOut, description="No such answer (or it expired)."),
          429: ResponseSpec(ErrorOut, description="Too many requests; see Retry-After."),
      })
async def give_feedback(data: FeedbackIn, service: RagService) -> FeedbackOut:
    """Rate an answer up or down, with an optional comment and the expected answer; kept
    with the question and answer it rates, for `rag eval export-feedback`."""
    answer_id = data.answer_id.removeprefix(CHAT_PREFIX)
    feedback = await anyio.to_thread.run_sync(
        service.conversations.rate, answer_id, data.rating, data.comment, data.expected_answer)
    return FeedbackOut(id=feedback.id, answer_id=feedback.answer_id, rating=feedback.rating)
