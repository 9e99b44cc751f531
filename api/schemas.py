"""Pydantic models of the HTTP boundary."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from rag.types import Answer


class AskFilters(BaseModel):
    model_config = ConfigDict(extra="forbid")
    document_ids: list[str] = Field(default_factory=list, description="Only these documents.")


class AskIn(BaseModel):
    """A question to answer from the indexed documents."""

    model_config = ConfigDict(extra="forbid")
    question: str = Field(description="The question, in plain words.")
    top_k: int | None = Field(None, ge=1, le=50, description="Sources to retrieve (1-50).")
    collection: str | None = Field(None, description="Search only this collection.")
    filters: AskFilters = Field(default_factory=AskFilters, description="Extra filters.")
    stream: bool = Field(
        False, description="Answer as Server-Sent Events (token, citations, done, error)."
    )


class CitationOut(BaseModel):
    """A numbered source: `[n]` in the answer refers to the citation with `number` n."""

    number: int = Field(description="The number the answer cites it by.")
    document_id: str = Field(description="Id (SHA-256) of the document.")
    filename: str = Field(description="The uploaded file's name.")
    chunk_id: int = Field(description="Id of the cited chunk.")
    text: str = Field(description="The cited text.")
    start: int = Field(description="Character offset of the text in the parsed document.")
    end: int = Field(description="Character offset just past the text.")
    page: int | None = Field(description="Page of the document, where it has pages.")
    score: float = Field(description="Retrieval score (higher is more relevant).")


class UsageOut(BaseModel):
    prompt_tokens: int = Field(description="Tokens in the prompt.")
    completion_tokens: int = Field(description="Tokens generated.")


class TimingsOut(BaseModel):
    """Milliseconds spent in each stage (a cached answer has only `total_ms`)."""

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
    cached: bool = Field(description="True when the answer came from the response cache.")
    usage: UsageOut
    timings: TimingsOut
    model: str = Field(description="The generator model.")
    index_version: int = Field(description="Version of the index the answer was built from.")

    @classmethod
    def of(cls, answer: Answer) -> AnswerOut:
        return cls(
            question=answer.question,
            answer=answer.text,
            citations=citations_of(answer),
            cached=answer.cached,
            usage=UsageOut(**vars(answer.usage)),
            timings=TimingsOut(**vars(answer.timings)),
            model=answer.model,
            index_version=answer.index_version,
        )


def citations_of(answer: Answer) -> list[CitationOut]:
    return [CitationOut(**vars(c)) for c in answer.citations]


class DoneOut(BaseModel):
    """Data of the streamed `done` event: everything but the text and citations."""

    cached: bool
    usage: UsageOut
    timings: TimingsOut
    model: str
    index_version: int

    @classmethod
    def of(cls, answer: Answer) -> DoneOut:
        return cls(cached=answer.cached, usage=UsageOut(**vars(answer.usage)),
                   timings=TimingsOut(**vars(answer.timings)), model=answer.model,
                   index_version=answer.index_version)


class ErrorOut(BaseModel):
    """Every error: what was wrong (`message`) and what to do about it (`hint`)."""

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "error": "InvalidInput", "message": "The question is empty.",
        "hint": "Send a question with some words."}]})
    error: str = Field(description="Kind of error.")
    message: str = Field(description="What was wrong.")
    hint: str = Field(description="What to do about it.")
    details: list[dict[str, Any]] | None = Field(
        None, description="Per-field problems of an invalid request.")


class ReadyOut(BaseModel):
    """Readiness: every check and, when not ready, the reasons."""

    ready: bool
    reasons: list[str] = Field(default_factory=list, description="Why it is not ready.")
    checks: dict[str, bool] = Field(
        default_factory=dict, description="models, index, redis (distributed mode only).")
