"""Asking: POST /v1/ask."""

from __future__ import annotations

from litestar import post

from api.schemas import AnswerOut, AskIn
from rag.service import AskRequest, RagService


def to_request(data: AskIn) -> AskRequest:
    return AskRequest(data.question, data.top_k, data.collection,
                      tuple(data.filters.document_ids))


@post("/v1/ask", sync_to_thread=True, status_code=200, tags=["ask"])
def ask(data: AskIn, service: RagService) -> AnswerOut:
    """Answer a question from the indexed documents, citing the chunks it used."""
    return AnswerOut.of(service.ask(to_request(data)))
