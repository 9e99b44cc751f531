"""The OpenAI chat-completions protocol's shapes (pydantic): the request of
POST /v1/chat/completions, the completion, the model list of GET /v1/models and OpenAI's error
body. Citations, evidence and the answer check ride along in `rag` (`RagOut`).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.config import JsonDict

from api.schemas import (
    SHORT_ANSWER,
    SHORT_ANSWER_SPAN,
    AskFilters,
    CitationOut,
    JsonInt,
    QuoteOut,
    ShortAnswerSpanOut,
)
from rag.settings import TOP_K_MAX

# The rules of `api.openai_chat` on messages, stated in the document as far as JSON Schema can
# (that the last user or assistant message is the user's cannot be: it points at no fixed item).
HISTORY_ROLES = ("user", "assistant")  # the conversation's turns
IGNORED_ROLES = ("system", "developer")  # read past: the service keeps its own system prompt
TEXT_PART: JsonDict = {"type": "object", "required": ["type", "text"],
                       "properties": {"type": {"const": "text"}, "text": {"type": "string"}}}


class ChatMessageIn(BaseModel):
    """A message: `content` is text, or a list of `{"type": "text", "text": ...}` parts."""

    # The parts of a user or assistant message are read; those of one read past are not.
    model_config = ConfigDict(extra="allow", json_schema_extra={
        "if": {"properties": {"role": {"enum": list(HISTORY_ROLES)}}},
        "then": {"properties": {"content": {"items": TEXT_PART}}}})
    role: str = Field(description="system, developer, user or assistant; system and "
                      "developer messages are read past, other roles are refused (400).",
                      json_schema_extra={"enum": [*IGNORED_ROLES, *HISTORY_ROLES]})
    content: str | list[dict[str, Any]] | None = None


class ChatCompletionIn(BaseModel):
    """OpenAI's chat-completion request; fields it has and this service does not use (`n` of
    1, `top_p`, `user`, ...) are accepted and read past. `top_k` and `collection` are extras."""

    model_config = ConfigDict(extra="allow")
    model: str = Field(description="The id GET /v1/models lists.")
    messages: list[ChatMessageIn] = Field(
        min_length=1, description="The conversation; the last is the question and must be the "
        "user's.", json_schema_extra={"contains": {"required": ["role"],
                                                   "properties": {"role": {"const": "user"}}}})
    stream: bool = Field(False, description="Answer as `chat.completion.chunk` events.")
    # JsonInt: the document's `integer` takes 2.0, so the strict validation must too.
    max_tokens: JsonInt | None = Field(None, ge=1, description="Cap on the answer's tokens "
                                       "(never above the service's RAG_MAX_NEW_TOKENS).")
    max_completion_tokens: JsonInt | None = Field(None, ge=1,
                                                  description="Same as max_tokens.")
    # Litestar leaves a bound of 0 out of the document; stated again.
    temperature: float | None = Field(None, ge=0.0, le=2.0, description="Accepted; answers are "
                                      "decoded greedily so they can be cached and checked.",
                                      json_schema_extra={"minimum": 0.0})
    # Stated here, checked in `api.openai_chat` (stops_of, to_request).
    stop: str | list[str] | None = Field(
        None, description="Up to 4 strings that end the answer.",
        json_schema_extra={"minLength": 1, "maxItems": 4,
                           "items": {"type": "string", "minLength": 1}})
    n: JsonInt | None = Field(None, description="Only 1 is supported.",
                              json_schema_extra={"minimum": 1, "maximum": 1})
    # The engine's bounds (AskService.check_top_k is the rule); validated here as well so an
    # out-of-range value stays a 400 naming the field, and 0 is refused, not the default.
    top_k: JsonInt | None = Field(None, ge=1, le=TOP_K_MAX,
                                  description="Sources to retrieve (extra).")
    collection: str | None = Field(None, description="Search only this collection (extra).")
    filters: AskFilters | None = Field(
        None, description="Only these documents, or those whose metadata match, as in "
        "POST /v1/ask (extra; OpenAI SDKs send it with `extra_body`).")


class RagOut(BaseModel):
    """What the service adds to an answer: its sources, evidence and check."""

    answer_id: str = Field(description="Rate the answer with POST /v1/feedback.")
    answer: str = Field(description="The checked answer (a quote may replace what was "
                        "streamed).")
    short_answer: str | None = Field(description=SHORT_ANSWER)
    short_answer_span: ShortAnswerSpanOut | None = Field(description=SHORT_ANSWER_SPAN)
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
