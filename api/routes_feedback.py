"""Feedback on answers: POST /v1/feedback. `rag eval export-feedback` turns it into a suite.

An answer is rated only by the key it was given to (in open mode, by anyone): another key's
answer id is a 404, as an unknown one.
"""

from __future__ import annotations

from typing import Any, Literal

import anyio.to_thread
from litestar import Request, post
from pydantic import BaseModel, ConfigDict, Field

from api.auth import caller_of, require_scope
from api.errors import api_errors
from api.routes_ask import require_json
from rag.ask.conversations import Conversations
from rag.errors import NotFound

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


@post("/v1/feedback", status_code=201, tags=["feedback"],
      guards=[require_scope("ask")], before_request=require_json,
      responses=api_errors("ask", {404: (
          "No such answer given to this key (or it expired).",
          NotFound("Answer 'a-1' is unknown.", "Rate an answer id from a recent response."))}))
async def give_feedback(
    data: FeedbackIn, conversations: Conversations, request: Request[Any, Any, Any]
) -> FeedbackOut:
    """Rate an answer this key was given up or down, with an optional comment and the expected
    answer; kept with the question and answer it rates, for `rag eval export-feedback`."""
    answer_id = data.answer_id.removeprefix(CHAT_PREFIX)
    feedback = await anyio.to_thread.run_sync(
        conversations.rate, answer_id, data.rating, data.comment, data.expected_answer,
        caller_of(request).owner)
    return FeedbackOut(id=feedback.id, answer_id=feedback.answer_id, rating=feedback.rating)
