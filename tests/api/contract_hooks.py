"""Schemathesis hooks of the contract test: what real uploads look like.

JSON Schema cannot say "a document with text" of a file part, so schemathesis would send image
samples and random bytes as `format: binary` files, which the service rightly refuses (415). The
upload's `encoding` lists the document types it reads; these strategies make files of two of
them (text and Markdown, judged by content like any upload). Importing this module registers
them and the failure filter below; the CLI takes it as SCHEMATHESIS_HOOKS=tests.api.contract_hooks.

The filter drops only failures the document cannot prevent, each by its exact error, and counts
them by reason in `DROPPED` (the contract test bounds the count). Every rule JSON Schema can
state is in the document instead.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

import schemathesis
from hypothesis import strategies as st
from schemathesis import Case, Response
from schemathesis.core.failures import AcceptedNegativeData, Failure
from schemathesis.openapi.checks import RejectedPositiveData

WORDS = st.lists(st.from_regex(r"[A-Za-z0-9]{1,12}", fullmatch=True), min_size=1, max_size=40)
TEXT_FILES = WORDS.map(lambda words: (" ".join(words) + ".\n").encode())
MARKDOWN_FILES = st.tuples(WORDS, WORDS).map(
    lambda parts: f"# {' '.join(parts[0])}\n\n{' '.join(parts[1])}.\n".encode())

schemathesis.openapi.media_type("text/plain", TEXT_FILES)
schemathesis.openapi.media_type("text/markdown", MARKDOWN_FILES)


# Text fields of the upload form; a multipart part is text on the wire.
FORM_TEXT = re.compile(r"violates `type` at /properties/collection \(was string, became "
                       r"(number|integer|boolean)\)")

# Refusals of /v1/chat/completions (OpenAI's error `code`, the start of its `message`) for rules
# on the last user or assistant message: which message that is depends on the roles, and JSON
# Schema can only point at array items counted from the front.
UNSTATABLE_CHAT_REFUSALS = {
    ("InvalidRequest", "The last message must be the user's question"):
        "chat: the last user or assistant message is the assistant's",
    ("InvalidInput", "The question is empty."): "chat: the last user message has no text",
}
UPLOAD_FORM_TEXT = "upload: a text form field made a number or boolean"

DROPPED: Counter[str] = Counter()  # failures the filter dropped, by reason


@schemathesis.hook("filter_failure")
def drop_unpreventable(context: schemathesis.HookContext, failure: Failure, case: Case[Any],
                       response: Response) -> bool:
    """Drop, and count in `DROPPED`, a failure the document cannot prevent; keep all others."""
    reason = unpreventable(failure, case, response)
    if reason is not None:
        DROPPED[reason] += 1
    return reason is None


def unpreventable(failure: Failure, case: Case[Any], response: Response) -> str | None:
    """Why `failure` is one the document cannot prevent, or None.

    - A chat request refused for a rule on its last message (`UNSTATABLE_CHAT_REFUSALS`).
    - An upload "made invalid" by turning the `collection` text field into a number or boolean:
      on the wire `collection=7` is the text "7", a valid name, so the service rightly accepts
      it. Schemathesis knows this for query and header parameters but not for form fields.
    - A view URL refused because its `end` is not after its `start` (`reversed_view_span`).
    """
    if (isinstance(failure, RejectedPositiveData) and case.path == "/v1/chat/completions"
            and response.status_code == 400):
        try:
            return unstatable_chat_refusal(response.json())
        except ValueError:
            return None
    if (isinstance(failure, AcceptedNegativeData) and case.path == "/v1/documents"
            and FORM_TEXT.search(failure.message) is not None):
        return UPLOAD_FORM_TEXT
    if (isinstance(failure, RejectedPositiveData) and response.status_code == 400
            and case.path == "/v1/documents/{document_id}/view"):
        return reversed_view_span(response)
    return None


def reversed_view_span(response: Response) -> str | None:
    """A view URL whose `end` is not after its `start`: JSON Schema cannot relate two query
    parameters, so the document cannot state this refusal."""
    try:
        details = response.json().get("details")
    except ValueError:
        return None
    if details == [{"message": "`end` must be greater than `start`", "key": "end",
                    "source": "query"}]:
        return "view: `end` not after `start`"
    return None


def unstatable_chat_refusal(body: object) -> str | None:
    """The reason in `UNSTATABLE_CHAT_REFUSALS` of an OpenAI error body, or None."""
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict) or error.get("type") != "invalid_request_error":
        return None
    for (code, opening), reason in UNSTATABLE_CHAT_REFUSALS.items():
        if error.get("code") == code and str(error.get("message", "")).startswith(opening):
            return reason
    return None
