"""Follow-up questions: the retrieval query carries the key terms of the earlier turns.

"How many dimensions does it produce?" alone retrieves nothing about the embedding model the
previous question named. The rewrite is deterministic and cheap: when a question refers back
(a pronoun or demonstrative, "what about ...", or too few words of its own to search with), the
content terms of the earlier questions (newest first) and the names, numbers and identifiers of
the last answer are appended to it, up to `MAX_TERMS`. The question the model answers, and the
answer check, still see the question as asked; only retrieval (and so evidence ranking, which
uses the retrieval vector) sees the rewrite.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import replace

from rag.ask.context import AskContext, quiet
from rag.types import Turn

MAX_TERMS = 8
MIN_OWN_TERMS = 3  # a question with fewer content terms than this leans on its context

def _split(words: str) -> list[str]:
    return words.split()


# Words, identifiers (RAG_TOP_K, all-MiniLM-L6-v2, bm25s) and numbers (200, 0.2, 23:15).
_TOKEN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:/-]*[A-Za-z0-9]|[A-Za-z0-9]")
_REFERS_BACK = frozenset(_split("""
it its it's itself they them their theirs themselves this that these those he him his she her
there then one ones former latter same such other others else also too
"""))
_CITATION = re.compile(r"\[\d+\]")
_OPENERS = ("what about", "how about", "and ", "what else", "why", "how so", "which one")
STOPWORDS = frozenset(_split("""
a an the and or but if of to in on at by for with from as is are was were be been being am do
does did doing have has had having can could will would shall should may might must not no nor
so than too very just only own same such what which who whom whose when where why how all any
both each few more most other some i me my we our you your about above after again against
before below between down during further here into once out over through under until up off
there these those this that it its they them their he him his she her then also else one ones
get gets got make makes made use used uses using tell say said know many much long often
former latter others
"""))


def terms(text: str) -> list[str]:
    """Content terms of `text` in order, lowercased, each once (stopwords dropped)."""
    seen: dict[str, None] = {}
    for token in _TOKEN.findall(text):
        term = token.lower().strip(".:/-")
        if term and term not in STOPWORDS and (len(term) > 1 or term.isdigit()):
            seen.setdefault(term, None)
    return list(seen)


def _named(text: str) -> list[str]:
    """Names, numbers and identifiers of `text` (capitalized words not opening a sentence,
    tokens with digits, underscores or inner capitals), lowercased, each once."""
    found: dict[str, None] = {}
    text = _CITATION.sub(" ", text)  # [1] is a source number, not a name
    for match in _TOKEN.finditer(text):
        token = match.group()
        before = text[: match.start()].rstrip()
        opens_sentence = not before or before[-1] in ".!?:[("
        special = any(c.isdigit() or c == "_" for c in token) or any(
            c.isupper() for c in token[1:])
        if special or (token[0].isupper() and not opens_sentence):
            term = token.lower().strip(".:/-")
            if term not in STOPWORDS:
                found.setdefault(term, None)
    return list(found)


def refers_back(question: str) -> bool:
    """Whether the question leans on earlier turns to be understood."""
    lowered = question.lower().strip()
    words = set(re.findall(r"[a-z']+", lowered))
    return (bool(words & _REFERS_BACK) or lowered.startswith(_OPENERS)
            or len(terms(question)) < MIN_OWN_TERMS)


def rewrite(question: str, history: Sequence[Turn], max_terms: int = MAX_TERMS) -> str:
    """The retrieval query for `question` asked after `history` (oldest turn first)."""
    if not history or not refers_back(question):
        return question
    own = set(terms(question))
    carried: dict[str, None] = {}
    sources = [terms(turn.question) for turn in reversed(history)]
    sources.insert(1, _named(history[-1].answer))  # the last answer names what "it" is
    for source in sources:
        for term in source:
            if term not in own:
                carried.setdefault(term, None)
    extra = list(carried)[:max_terms]
    return f"{question} {' '.join(extra)}" if extra else question


class FollowupStage:
    """Ask stage: the retrieval query of a follow-up question (`ctx.search`)."""

    name = "followup"

    def __init__(self, max_terms: int = MAX_TERMS) -> None:
        self.max_terms = max_terms

    @quiet
    def run(self, ctx: AskContext) -> AskContext:
        if not ctx.history:
            return ctx
        search = rewrite(ctx.question, ctx.history, self.max_terms)
        return replace(ctx, search=search if search != ctx.question else "")
