"""The answer check: each answer sentence against the evidence, deterministic, no model judge.

A sentence is supported when every number and name in it occurs in the sources it cites (all
the prompt's sources when it cites none) and enough of its content words (stemmed, function
words left out) occur in one evidence sentence of those sources: its best supporting quote.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

import Stemmer

from rag.ask.context import AskContext, quiet
from rag.generation.stopping import split_sentences
from rag.types import NO_ANSWER, AnswerMode, Quote, ScoredSentence, SentenceCheck

# English function words: they carry no claim, so they count neither for nor against support.
STOPWORDS = frozenset([
    "a", "about", "above", "after", "again", "against", "all", "also", "am", "an", "and", "any",
    "are", "as", "at", "be", "because", "been", "before", "being", "below", "between", "both",
    "but", "by", "can", "could", "did", "do", "does", "doing", "done", "down", "during", "each",
    "either", "else", "even", "ever", "every", "few", "for", "from", "further", "had", "has",
    "have", "having", "he", "her", "here", "hers", "herself", "him", "himself", "his", "how",
    "however", "i", "if", "in", "into", "is", "it", "its", "itself", "just", "least", "less",
    "many", "may", "me", "might", "more", "most", "much", "must", "my", "myself", "neither", "no",
    "nor", "not", "now", "of", "off", "often", "on", "once", "one", "only", "or", "other", "our",
    "ours", "ourselves", "out", "over", "own", "per", "rather", "same", "shall", "she", "should",
    "since", "so", "some", "such", "than", "that", "the", "their", "theirs", "them", "themselves",
    "then", "there", "these", "they", "this", "those", "though", "through", "thus", "to", "too",
    "under", "until", "up", "upon", "us", "very", "via", "was", "we", "were", "what", "when",
    "where", "whether", "which", "while", "who", "whom", "whose", "why", "will", "with", "within",
    "without", "would", "yet", "you", "your", "yours", "yourself", "yourselves"
])

_CITATION = re.compile(r"\[\d+\]")
_WORD = re.compile(r"[^\W_]+(?:['’][^\W_]+)*")
# A number: digits with their separators (1,000; 3.5; 2014-03-05; 10:30).
_NUMBER = re.compile(r"\d+(?:[.,:/-]\d+)*")
# A name: a capitalised word (or an acronym), apostrophes and inner hyphens included.
_NAME = re.compile(r"\b[A-Z][\w'’]*(?:-[\w'’]+)*")
# Words that open an answer sentence without naming anything.
_OPENERS = frozenset([
    "yes", "no", "sure", "answer", "according", "based", "note", "here", "overall", "in"
])
_stemmer = Stemmer.Stemmer("english")


@dataclass(frozen=True)
class Candidate:
    """An evidence sentence a claim may lean on: its text and the source number it is in."""

    text: str
    source: int

    @functools.cached_property
    def words(self) -> set[str]:
        return content_words(self.text)


def cited_sources(sentence: str) -> set[int]:
    return {int(m.group()[1:-1]) for m in _CITATION.finditer(sentence)}


def content_words(text: str) -> set[str]:
    """Stemmed, case-folded words that are not function words."""
    words = [w.casefold() for w in _WORD.findall(text)]
    return set(_stemmer.stemWords([w for w in words if w not in STOPWORDS]))


def facts(sentence: str) -> list[str]:
    """The numbers and names of a sentence: what must occur in its sources word for word."""
    text = _CITATION.sub(" ", sentence)
    found = _NUMBER.findall(text)
    for match in _NAME.finditer(text):
        word = match.group()
        folded = word.casefold()
        first = not text[: match.start()].strip()
        if folded not in STOPWORDS and not (first and folded in _OPENERS):
            found.append(word)
    return list(dict.fromkeys(found))


def _occurs(fact: str, source_text: str, source_words: set[str]) -> bool:
    if fact[0].isdigit():
        digits = fact.replace(",", "")
        return any(re.search(rf"(?<![\d.,]){re.escape(f)}(?![\d]|[.,]\d)", source_text)
                   for f in {fact, digits})
    return all(part.casefold() in source_words for part in _WORD.findall(fact))


def check_sentence(
    sentence: str,
    question: str,
    candidates: Sequence[Candidate],
    sources: dict[int, str],
    min_overlap: float,
) -> tuple[SentenceCheck, int | None]:
    """Check one answer sentence; also returns the index into `candidates` of its best quote.

    `sources`: number -> text of every source the prompt showed.
    """
    cited = cited_sources(sentence) & set(sources) or set(sources)
    source_text = "\n".join(sources[n] for n in sorted(cited))
    source_words = {w.casefold() for w in _WORD.findall(source_text)}
    missing = tuple(f for f in facts(sentence) if not _occurs(f, source_text, source_words))
    # Words the question already says are no claim: an answer that only echoes it says nothing.
    words = content_words(_CITATION.sub(" ", sentence)) - content_words(question)
    best, best_overlap = None, 0.0
    for index, candidate in enumerate(candidates):  # best-ranked first: ties keep the earlier
        if candidate.source not in cited or not words:
            continue
        overlap = len(words & candidate.words) / len(words)
        if overlap > best_overlap:
            best, best_overlap = index, overlap
    supported = not missing and best is not None and best_overlap >= min_overlap
    check = SentenceCheck(text=sentence, supported=supported, overlap=round(best_overlap, 4),
                          missing=missing)
    return check, best


def answer_sentences(text: str) -> list[str]:
    """The sentences of an answer that make a claim (a lone citation or label does not)."""
    return [s for s in split_sentences(text) if content_words(_CITATION.sub(" ", s))]


_DECLINES = re.compile(r"\b(?:do|does) not (?:contain|mention|say)\b|\bcannot (?:answer|find)\b")

UnsupportedAnswer = Literal["quote", "flag", "drop"]


@dataclass(frozen=True)
class _Shown:
    """An evidence sentence of a prompt source."""

    item: ScoredSentence
    source: int
    filename: str


class CheckStage:
    """Ask stage: check the generated answer against its evidence and settle what to answer.

    `unsupported`: what an answer with unsupported sentences becomes. `quote` keeps its
    supported sentences, or when none is, answers with the best evidence sentence as a quote
    (also when the model declined but that sentence's cosine to the question reaches
    `min_quote_score`: a small model declines wrongly); `flag` keeps it as it is (each sentence
    marked in `sentences`); `drop` abstains.
    """

    name = "check"

    def __init__(self, min_overlap: float, unsupported: UnsupportedAnswer,
                 quotes: int = 4, min_quote_score: float = 0.5) -> None:
        self.min_overlap = min_overlap
        self.unsupported = unsupported
        self.quotes = quotes
        self.min_quote_score = min_quote_score

    @quiet
    def run(self, ctx: AskContext) -> AskContext:
        assert ctx.prompt is not None and ctx.evidence is not None
        shown, texts = _sources(ctx)
        pool = [Candidate(s.item.sentence.text, s.source) for s in shown]
        checks: list[SentenceCheck] = []
        best: list[int | None] = []
        declined = not ctx.generated or bool(_DECLINES.search(ctx.generated))
        for sentence in ([] if declined else answer_sentences(ctx.generated)):
            check, index = check_sentence(sentence, ctx.question, pool, texts, self.min_overlap)
            checks.append(check)
            best.append(index)
        supported = [c for c in checks if c.supported]
        groundedness = len(supported) / len(checks) if checks else 0.0
        lead: int | None = None
        mode: AnswerMode
        strong = bool(shown) and shown[0].item.dense >= self.min_quote_score
        if declined and not (self.unsupported == "quote" and strong):
            text, mode = NO_ANSWER, "abstained"
        elif (checks and len(supported) == len(checks)) or self.unsupported == "flag":
            text, mode = ctx.generated, "generated"
        elif self.unsupported == "drop" or not shown:
            text, mode = NO_ANSWER, "abstained"
        elif supported:
            text, mode = " ".join(c.text for c in supported), "generated"
        else:
            lead = 0  # `shown` is best-ranked first
            quoted = shown[lead]
            words = " ".join(quoted.item.sentence.text.split())
            text, mode = f'"{words}" [{quoted.source}]', "quote"
        quotes, checks = _quotes(shown, checks, best, lead, self.quotes)
        return replace(ctx, text=text, mode=mode, groundedness=round(groundedness, 4),
                       sentences=tuple(checks), quotes=quotes)


def _sources(ctx: AskContext) -> tuple[list[_Shown], dict[int, str]]:
    """Evidence sentences per prompt source (best-ranked first) and each source's text.

    In `evidence` context a source is the sentences the prompt showed; in `chunks` context it
    is the chunk, and its sentences are the candidates evidence selection ranked inside it.
    """
    assert ctx.prompt is not None and ctx.evidence is not None
    prompt = ctx.prompt
    shown: list[_Shown] = []
    texts: dict[int, str] = {}
    for number, source in enumerate(prompt.sources, start=1):
        sentences = prompt.evidence[number - 1] if prompt.evidence else ()
        if sentences:
            texts[number] = " ".join(s.sentence.text for s in sentences)
        else:
            c = source.chunk
            texts[number] = c.text
            sentences = tuple(
                s for s in ctx.evidence.ranked
                if s.sentence.document_id == c.document_id
                and c.start <= s.sentence.start and s.sentence.end <= c.end
            )
        shown.extend(_Shown(s, number, source.filename) for s in sentences)
    shown.sort(key=lambda s: s.item.rank or 10**9)
    return shown, texts


def _quotes(
    shown: Sequence[_Shown], checks: list[SentenceCheck], best: list[int | None],
    lead: int | None, limit: int,
) -> tuple[tuple[Quote, ...], list[SentenceCheck]]:
    """The answer's evidence: the quoted sentence first (if any), each sentence's best support,
    then the best-ranked rest up to `limit`; and the checks pointing at their quote."""
    order: list[int] = [] if lead is None else [lead]
    for index in best:
        if index is not None and index not in order:
            order.append(index)
    for index in range(len(shown)):
        if len(order) >= limit:
            break
        if index not in order:
            order.append(index)
    supports: dict[int, int] = {}
    for number, index in enumerate(best, start=1):
        if index is not None and checks[number - 1].supported:
            supports.setdefault(index, number)
    position = {index: at for at, index in enumerate(order)}
    quotes = tuple(_quote(shown[i], supports.get(i)) for i in order)
    pointed = [replace(c, quote=position[b]) if b is not None else c
               for c, b in zip(checks, best, strict=True)]
    return quotes, pointed


def _quote(shown: _Shown, supports: int | None) -> Quote:
    s = shown.item.sentence
    return Quote(text=s.text, document_id=s.document_id, filename=shown.filename, start=s.start,
                 end=s.end, page=s.page, title_path=s.title_path,
                 score=round(shown.item.dense, 6), source=shown.source, supports=supports)
