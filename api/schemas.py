"""Pydantic models of the HTTP boundary."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from rag.types import Answer


class AskFilters(BaseModel):
    model_config = ConfigDict(extra="forbid")
    document_ids: list[str] = Field(default_factory=list, description="Only these documents.")


class AskIn(BaseModel):
    """A question to answer from the indexed documents."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"question": "What is the default chunk size?",
                                         "top_k": 5}]},
    )
    question: str = Field(description="The question, in plain words.")
    top_k: int | None = Field(None, ge=1, le=50, description="Sources to retrieve (1-50).")
    collection: str | None = Field(None, description="Search only this collection.")
    filters: AskFilters = Field(default_factory=AskFilters, description="Extra filters.")
    stream: bool = Field(False, description="Answer as Server-Sent Events.")


class CitationOut(BaseModel):
    number: int
    document_id: str
    filename: str
    chunk_id: int
    text: str
    start: int
    end: int
    page: int | None
    score: float


class UsageOut(BaseModel):
    prompt_tokens: int
    completion_tokens: int


class TimingsOut(BaseModel):
    retrieve_ms: float
    prompt_ms: float
    first_token_ms: float
    generate_ms: float
    total_ms: float


class AnswerOut(BaseModel):
    """An answer with the sources it was given, numbered as the answer cites them."""

    question: str
    answer: str
    citations: list[CitationOut]
    cached: bool
    usage: UsageOut
    timings: TimingsOut
    model: str
    index_version: int

    @classmethod
    def of(cls, answer: Answer) -> AnswerOut:
        return cls(
            question=answer.question,
            answer=answer.text,
            citations=[CitationOut(**vars(c)) for c in answer.citations],
            cached=answer.cached,
            usage=UsageOut(**vars(answer.usage)),
            timings=TimingsOut(**vars(answer.timings)),
            model=answer.model,
            index_version=answer.index_version,
        )
