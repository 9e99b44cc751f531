"""Schemathesis hooks of the contract test: what real uploads look like.

JSON Schema cannot say "a document with text" of a file part, so schemathesis would send image
samples and random bytes as `format: binary` files, which the service rightly refuses (415). The
upload's `encoding` lists the document types it reads; these strategies make files of two of
them (text and Markdown, judged by content like any upload). Importing this module registers
them and the one failure filter below; the CLI takes it as
SCHEMATHESIS_HOOKS=tests.api.contract_hooks.
"""

from __future__ import annotations

import re

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


@schemathesis.hook("filter_failure")
def multipart_text_is_text(context: schemathesis.HookContext, failure: Failure, case: Case,
                           response: Response) -> bool:
    """Drop one false positive, counted as filtered: an upload "made invalid" by turning the
    `collection` text field into a number or boolean.

    On the wire `collection=7` is the text "7", a valid name, so the service rightly accepts it.
    Schemathesis knows this for query and header parameters but not for form fields.
    """
    if isinstance(failure, RejectedPositiveData) and case.path == "/v1/chat/completions":
        return not (response.status_code == 400 and _openai_semantic_refusal(response))
    if isinstance(failure, RejectedPositiveData) and case.path == "/v1/ask":
        # conversation + history together: a rule the generated schema does not state yet
        return not (response.status_code == 422 and "Both a conversation" in response.text)
    return not (isinstance(failure, AcceptedNegativeData) and case.path == "/v1/documents"
                and FORM_TEXT.search(failure.message) is not None)


def _openai_semantic_refusal(response: Response) -> bool:
    """A 400 in OpenAI's shape for messages whose order or content the schema cannot state
    (the last message must be the user's text; content parts must be text). The request
    schema is OpenAI's own, which JSON Schema cannot narrow to that."""
    try:
        body = response.json()
    except ValueError:
        return False
    error = body.get("error") if isinstance(body, dict) else None
    return (response.status_code == 400 and isinstance(error, dict)
            and error.get("type") == "invalid_request_error"
            and error.get("code") == "InvalidRequest")
