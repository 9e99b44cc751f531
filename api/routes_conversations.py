"""Conversations: GET /v1/conversations, GET and DELETE /v1/conversations/{id}.

A conversation belongs to the key that started it (in open mode, to everyone); other keys see
a 404. Asking with its id continues it (POST /v1/ask `conversation`).
"""

from __future__ import annotations

from typing import Annotated, Any

import anyio.to_thread
from litestar import Request, delete, get
from litestar.params import Parameter
from pydantic import BaseModel, Field

from api.auth import caller_of, require_scope
from api.errors import api_errors
from rag.ask.conversations import Conversations
from rag.errors import NotFound
from rag.types import AnswerRecord, Conversation


class TurnOut(BaseModel):
    """One answered question of a conversation."""

    answer_id: str = Field(description="The answer's id (rate it with POST /v1/feedback).")
    question: str
    answer: str
    mode: str = Field(description="generated, quote or abstained.")
    documents: list[str] = Field(description="Filenames of the cited documents.")
    created_at: float = Field(description="Unix time of the answer.")

    @classmethod
    def of(cls, record: AnswerRecord) -> TurnOut:
        return cls(answer_id=record.id, question=record.question, answer=record.answer,
                   mode=record.mode, documents=list(record.documents),
                   created_at=record.created_at)


class ConversationOut(BaseModel):
    """A conversation; `turns` only when one conversation is asked for."""

    id: str
    title: str = Field(description="Its first question.")
    created_at: float
    updated_at: float = Field(description="Unix time of its last turn.")
    expires_at: float = Field(description="When it expires unless continued.")
    turns: list[TurnOut] | None = None

    @classmethod
    def of(cls, conversation: Conversation, turns: bool = False) -> ConversationOut:
        return cls(id=conversation.id, title=conversation.title,
                   created_at=conversation.created_at, updated_at=conversation.updated_at,
                   expires_at=conversation.expires_at,
                   turns=[TurnOut.of(t) for t in conversation.turns] if turns else None)


class ConversationsOut(BaseModel):
    conversations: list[ConversationOut]


ERRORS = api_errors("ask", {})
NOT_FOUND = api_errors("ask", {404: (
    "Unknown, expired or not yours.",
    NotFound("Conversation 'c-1' does not exist.", "Start a new one by asking without it."))})
LIMIT = Parameter(ge=1, le=500, description="Most conversations to list.")


@get("/v1/conversations", tags=["conversations"], guards=[require_scope("ask")],
     responses=ERRORS)
async def list_conversations(
    conversations: Conversations, request: Request[Any, Any, Any],
    limit: Annotated[int, LIMIT] = 50,
) -> ConversationsOut:
    """This key's live conversations, most recently continued first."""
    found = await anyio.to_thread.run_sync(conversations.recent, caller_of(request).owner,
                                           limit)
    return ConversationsOut(conversations=[ConversationOut.of(c) for c in found])


@get("/v1/conversations/{conversation_id:str}", tags=["conversations"],
     guards=[require_scope("ask")], responses=NOT_FOUND)
async def get_conversation(
    conversation_id: str, conversations: Conversations, request: Request[Any, Any, Any]
) -> ConversationOut:
    """One conversation with its turns, oldest first."""
    found = await anyio.to_thread.run_sync(conversations.get, conversation_id,
                                           caller_of(request).owner)
    return ConversationOut.of(found, turns=True)


@delete("/v1/conversations/{conversation_id:str}", tags=["conversations"],
        guards=[require_scope("ask")], responses=NOT_FOUND)
async def delete_conversation(
    conversation_id: str, conversations: Conversations, request: Request[Any, Any, Any]
) -> None:
    """Forget a conversation and its answers (feedback already given is kept)."""
    await anyio.to_thread.run_sync(conversations.delete, conversation_id,
                                   caller_of(request).owner)


ROUTES = [list_conversations, get_conversation, delete_conversation]
