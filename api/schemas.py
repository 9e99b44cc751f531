"""Pydantic models of the HTTP boundary."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal

from litestar.plugins.pydantic import PydanticSchemaPlugin
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from api.view_links import ViewLinks
from rag.filters import MAX_FIELD_LENGTH, MAX_FIELDS, MAX_IN_VALUES, MetadataFilter
from rag.settings import TOP_K_MAX
from rag.types import Answer

if TYPE_CHECKING:
    from litestar._openapi.schema_generation import SchemaCreator
    from litestar.openapi.spec import Schema
    from litestar.typing import FieldDefinition


class StrictModelSchemaPlugin(PydanticSchemaPlugin):
    """Litestar's pydantic schemas, plus `additionalProperties: false` for models that forbid
    extra fields (Litestar leaves it out, so the document would promise to accept them), plus
    the model's own `json_schema_extra` (Litestar reads it on fields only), for rules across
    fields."""

    @classmethod
    def for_pydantic_model(cls, field_definition: FieldDefinition,
                           schema_creator: SchemaCreator) -> Schema:
        schema = super().for_pydantic_model(field_definition, schema_creator)
        config = field_definition.annotation.model_config
        if config.get("extra") == "forbid":
            schema.additional_properties = False
        extra = config.get("json_schema_extra")
        if isinstance(extra, dict):
            aliases = schema.field_aliases()  # "not" is `schema_not`, "if" `schema_if`
            for key, value in extra.items():
                setattr(schema, aliases.get(str(key), str(key)), value)
        return schema


def _integral(value: object) -> object:
    """JSON Schema counts 5.0 as an integer; strict validation would not."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


JsonInt = Annotated[int, BeforeValidator(_integral)]


def _conditions(kind: dict[str, Any], ordered: bool) -> dict[str, Any]:
    """The operator object of one kind of value (a boolean has no order: no $gte/$lte)."""
    properties = {"$eq": kind, "$ne": kind, "$in": {
        "type": "array", "items": kind, "minItems": 1, "maxItems": MAX_IN_VALUES}}
    if ordered:
        properties |= {"$gte": kind, "$lte": kind}
    return {"type": "object", "properties": properties, "additionalProperties": False,
            "minProperties": 1}


# What `rag.filters.MetadataFilter.parse` takes, for the OpenAPI document: per field a value
# (equality) or an object of operators whose values are all of one kind.
_SCALARS = ({"type": "string"}, {"type": "number"}, {"type": "boolean"})
METADATA_FILTER_SCHEMA: dict[str, Any] = {
    "maxProperties": MAX_FIELDS,
    "propertyNames": {"minLength": 1, "maxLength": MAX_FIELD_LENGTH, "pattern": "^[^$]"},
    "additionalProperties": {"anyOf": [
        *_SCALARS, *(_conditions(kind, kind["type"] != "boolean") for kind in _SCALARS)]},
}


class AskFilters(BaseModel):
    model_config = ConfigDict(extra="forbid")
    document_ids: list[str] = Field(default_factory=list, description="Only these documents.")
    metadata: dict[str, Any] = Field(
        default_factory=dict, json_schema_extra=METADATA_FILTER_SCHEMA,
        description='Only documents whose upload metadata match, all '
        'fields together: `{"year": {"$gte": 2020}, "dept": {"$in": ["hr", "legal"]}}`. A '
        "plain value is equality; operators `$eq`, `$ne`, `$in`, `$gte`, `$lte` on numbers, "
        "ISO dates and strings (a date and a plain string never compare: one field's values "
        "are of one kind). Applied before ranking; an unknown operator or a value of the "
        "wrong kind is a 400 naming the field.")

    def metadata_filter(self) -> MetadataFilter | None:
        """The parsed metadata filter (None when empty); InvalidFilter (400) names the field."""
        return MetadataFilter.parse(self.metadata) if self.metadata else None


class TurnIn(BaseModel):
    """An earlier exchange of the conversation, as the client kept it."""

    model_config = ConfigDict(extra="forbid")
    question: str = Field(description="What was asked.")
    answer: str = Field(description="What was answered.")


class AskIn(BaseModel):
    """A question to answer from the indexed documents."""

    # Stated for clients, checked by the engine (Conversations.thread, 422): not a conversation
    # and earlier turns together. A null conversation or an empty history is neither.
    model_config = ConfigDict(extra="forbid", json_schema_extra={"not": {
        "required": ["conversation", "history"],
        "properties": {"conversation": {"type": "string"}, "history": {"minItems": 1}}}})
    question: str = Field(
        description="The question, in plain words (at most RAG_MAX_QUESTION_CHARS characters, "
        "2000 by default, and short enough to fit the model's context window).",
        # documented here, checked by the engine (one place validates a question)
        json_schema_extra={"minLength": 1, "pattern": r"\S"})
    # The engine's bounds (AskService.check_top_k is the rule); validated here as well so an
    # out-of-range value stays a 400 naming the field, and 0 is refused, not the default.
    top_k: JsonInt | None = Field(None, ge=1, le=TOP_K_MAX,
                                  description=f"Sources to retrieve (1-{TOP_K_MAX}).")
    collection: str | None = Field(
        None, description="Search only this collection (404 when no document is in it).")
    filters: AskFilters = Field(default_factory=AskFilters, description="Extra filters.")
    stream: bool = Field(False, description="Answer as Server-Sent Events "
                         "(token, citations, done, error); a JSON boolean, not 0 or 1.")
    conversation: str | None = Field(
        None, description="Continue this conversation (the `conversation` of an earlier "
        "answer); left out, the answer starts a new one.")
    history: list[TurnIn] = Field(
        default_factory=list, description="Or the earlier turns, oldest first, for a client "
        "that keeps the conversation itself (nothing is continued then).")


VIEW_URL = ("A page that shows the text in its source, marked (for a PDF, on its page as it "
            "looks), relative to the API's address. With keys on it carries a short-lived "
            "token (RAG_VIEW_TOKEN_S) that opens this document without a key header.")


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
    view_url: str = Field(description=VIEW_URL)


class QuoteOut(BaseModel):
    """Evidence: a sentence of a source, exactly as the parsed document has it."""

    text: str = Field(description="The quoted text: the parsed document's text[start:end].")
    document_id: str = Field(description="Id (SHA-256) of the document.")
    filename: str = Field(description="The uploaded file's name.")
    start: int = Field(description="Character offset of the quote in the parsed document.")
    end: int = Field(description="Character offset just past the quote.")
    page: int | None = Field(description="Page of the document, where it has pages.")
    title_path: list[str] = Field(description="Headings above the quote, outermost first.")
    score: float = Field(description="Cosine similarity of the quote to the question.")
    source: int = Field(description="Number of the citation (source) the quote is in.")
    supports: int | None = Field(
        description="Number (from 1) of the answer sentence it supports, if any.")
    view_url: str = Field(description=VIEW_URL)


class SentenceCheckOut(BaseModel):
    """One sentence of the generated answer, checked against the evidence."""

    text: str
    supported: bool = Field(description="Its names and numbers occur in its sources and its "
                            "content words in its best quote.")
    overlap: float = Field(description="Share of its new content words in its best quote.")
    missing: list[str] = Field(description="Numbers and names found in no cited source.")
    quote: int | None = Field(description="Index into `evidence` of its best quote.")


class ShortAnswerSpanOut(BaseModel):
    """Where the short answer stands in the evidence."""

    quote: int = Field(description="Index into `evidence` of the quote that holds it.")
    start: int = Field(description="Character offset of it in the parsed document.")
    end: int = Field(description="Character offset just past it.")


SHORT_ANSWER = ("The few words that answer a factual question (who, where, when, which, what, "
                "how many), checked like the answer; null for other questions (how, why) and "
                "when none passed the check.")
SHORT_ANSWER_SPAN = ("Where `short_answer` stands in `evidence`; null when it is not a span of "
                     "a quote.")


def short_answer_of(answer: Answer) -> dict[str, Any]:
    """The short answer's fields: its words and where they stand in the evidence."""
    short = answer.short_answer
    span = None
    if short is not None and short.quote is not None:
        assert short.start is not None and short.end is not None
        span = ShortAnswerSpanOut(quote=short.quote, start=short.start, end=short.end)
    return {"short_answer": short.text if short else None, "short_answer_span": span}


class UsageOut(BaseModel):
    prompt_tokens: int = Field(description="Tokens in the prompt.")
    completion_tokens: int = Field(description="Tokens generated.")


class TimingsOut(BaseModel):
    """Milliseconds spent in each stage (a cached answer has only `total_ms`)."""

    retrieve_ms: float
    evidence_ms: float
    prompt_ms: float
    first_token_ms: float
    first_sentence_ms: float = Field(
        description="To the first text that passed the check (streamed: the first `token`).")
    generate_ms: float
    check_ms: float
    total_ms: float
    stages: dict[str, float] = Field(description="Every stage of the ask path by name.")


class AnswerOut(BaseModel):
    """An answer with the sources it was given, numbered as the answer cites them."""

    question: str
    answer: str = Field(description="The answer: generated, or a quote of the best evidence.")
    short_answer: str | None = Field(description=SHORT_ANSWER)
    short_answer_span: ShortAnswerSpanOut | None = Field(description=SHORT_ANSWER_SPAN)
    citations: list[CitationOut]
    mode: Literal["generated", "quote", "abstained"] = Field(
        description="generated: the model's answer, checked; quote: the model's answer was not "
        "supported, so the best evidence sentence is quoted instead; abstained: no answer.")
    groundedness: float = Field(
        description="Share of the generated answer's sentences the evidence supports (0-1).")
    evidence: list[QuoteOut] = Field(description="Verified quotes from the sources.")
    sentences: list[SentenceCheckOut] = Field(
        description="The generated answer's sentences and their check.")
    generated_text: str = Field(description="What the model generated (cleaned).")
    cached: bool = Field(description="True when the answer came from the response cache.")
    usage: UsageOut
    timings: TimingsOut
    model: str = Field(description="The generator model.")
    index_version: int = Field(description="Version of the index the answer was built from.")
    answer_id: str = Field(description="This answer's id: rate it with POST /v1/feedback.")
    conversation: str | None = Field(
        description="The conversation it belongs to: send it with the next question.")
    history_turns: int = Field(description="Earlier turns the prompt held.")
    note: str = Field(description="Said about the conversation, e.g. that an expired one "
                      "started afresh; empty otherwise.")

    @classmethod
    def of(cls, answer: Answer, links: ViewLinks) -> AnswerOut:
        return cls(
            question=answer.question,
            answer=answer.text,
            citations=citations_of(answer, links),
            **checked_of(answer, links),
            cached=answer.cached,
            usage=UsageOut(**vars(answer.usage)),
            timings=TimingsOut(**vars(answer.timings)),
            model=answer.model,
            index_version=answer.index_version,
            **conversation_of(answer),
        )


def conversation_of(answer: Answer) -> dict[str, Any]:
    """The fields that place an answer in its conversation."""
    return {"answer_id": answer.id, "conversation": answer.conversation_id,
            "history_turns": answer.history_turns, "note": answer.note}


def citations_of(answer: Answer, links: ViewLinks) -> list[CitationOut]:
    """The answer's citations, each with the link that shows it in its source."""
    return [CitationOut(**vars(c), view_url=links.view_url(c.document_id, c.start, c.end, c.page))
            for c in answer.citations]


def evidence_of(answer: Answer, links: ViewLinks) -> list[QuoteOut]:
    """The answer's quotes, each with the link that shows it in its source."""
    return [QuoteOut(**{**vars(q), "title_path": list(q.title_path)},
                     view_url=links.view_url(q.document_id, q.start, q.end, q.page))
            for q in answer.evidence]


def checked_of(answer: Answer, links: ViewLinks) -> dict[str, Any]:
    """The fields the answer check adds: mode, groundedness, evidence, sentences, generated
    text and short answer."""
    return {
        "mode": answer.mode,
        "groundedness": answer.groundedness,
        "evidence": evidence_of(answer, links),
        "sentences": [SentenceCheckOut(**{**vars(c), "missing": list(c.missing)})
                      for c in answer.sentences],
        "generated_text": answer.generated_text,
        **short_answer_of(answer),
    }


class DoneOut(BaseModel):
    """Data of the streamed `done` event: the final answer (the streamed tokens, joined), its
    check and evidence; not citations."""

    answer: str
    short_answer: str | None = Field(description=SHORT_ANSWER)
    short_answer_span: ShortAnswerSpanOut | None = Field(description=SHORT_ANSWER_SPAN)
    mode: Literal["generated", "quote", "abstained"]
    groundedness: float
    evidence: list[QuoteOut]
    sentences: list[SentenceCheckOut]
    generated_text: str
    cached: bool
    usage: UsageOut
    timings: TimingsOut
    model: str
    index_version: int
    answer_id: str
    conversation: str | None
    history_turns: int
    note: str

    @classmethod
    def of(cls, answer: Answer, links: ViewLinks) -> DoneOut:
        return cls(answer=answer.text, **checked_of(answer, links), cached=answer.cached,
                   usage=UsageOut(**vars(answer.usage)),
                   timings=TimingsOut(**vars(answer.timings)), model=answer.model,
                   index_version=answer.index_version, **conversation_of(answer))


class IndexLogOut(BaseModel):
    """Where this process's index stands in the store's change log."""

    applied: int = Field(description="The last change applied to this process's index.")
    latest: int = Field(description="The newest change this process has seen in the log.")
    behind: int = Field(description="Changes seen and not applied yet.")
    checked_s_ago: float | None = Field(
        description="Seconds since the log was last read (it is read at least every "
        "RAG_INDEX_CATCHUP_S while the database answers).")
    error: str | None = Field(None, description="Why the last read failed, if it did.")


class ReadyOut(BaseModel):
    """Readiness: every check and, when not ready, the reasons."""

    ready: bool
    reasons: list[str] = Field(default_factory=list, description="Why it is not ready.")
    checks: dict[str, bool] = Field(
        default_factory=dict, description="models, index, redis and database (distributed "
        "mode only).")
    index_log: IndexLogOut | None = Field(
        None, description="With PostgreSQL: how far this process's index follows the change "
        "log.")
