"""Short answers: the few words of a checked answer that answer a factual question.

A factual question asks who, whom, whose, where, when, which, what or how many/much; how and why
questions, those with no question word, and list questions answered from table rows
(`asks_for_list`: a few words would name one row of many) get none (no forced one). The short
answer is read from the answer's first sentence that passed the check (or the quoted evidence
sentence when the answer is a quote): what it says beyond the question. Its words are cut into
runs at the question's own content words, at copulas (is, was, has) and at commas, brackets and
colons (other function words do not cut: "founded in 1842 by Father Sorin" keeps "1842 by Father
Sorin" together) and into phrases at function words, except those that join a name ("University
of Notre Dame"). A typed question (`ask.answer_type`) takes a phrase of its kind (a number for
how many, a name for who; for which X, the phrase with X in it before a name, a name before a
number); an untyped one ("what is the grotto?") a short run. Of those, one outside brackets
before one inside (an aside describes), then the one nearest the question's words in the
sentence; a share takes a number with % first.

The words found are then looked up in the answer's evidence: the short answer is the
evidence's own text at that place (with its document offsets) where it occurs there, and it
must pass the check as an answer of its own (`ask.check.Judge`), else there is none.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import replace

import Stemmer
from spacy.tokens import Doc, Span, Token

from rag.ask.answer_type import AnswerType, answer_type, is_calendar, is_name, is_number, nlp
from rag.ask.check import CheckStage
from rag.ask.claims import STOPWORDS
from rag.ask.context import AskContext, quiet
from rag.ask.evidence import asks_for_list
from rag.types import Quote, ShortAnswer

# The most words a short answer has; a longer run is no short answer.
MAX_WORDS = 8
_FACTUAL = frozenset(["who", "whom", "whose", "where", "when", "which", "what"])
_HOW_MUCH = frozenset(["many", "much", "long", "large", "big", "old", "far", "tall", "high",
                       "heavy", "often", "fast"])
_QUESTION_WORDS = _FACTUAL | {"how", "why"}
# Function words that stay inside a name: "University of Notre Dame", "Charles de Gaulle".
_JOINERS = frozenset(["of", "the", "and", "de", "du", "da", "la", "le", "van", "von", "&",
                      "'s", "’s", "-", "/"])
# Punctuation that ends a run.
_BREAKS = frozenset([",", ";", ":", "(", ")", "[", "]", "|", '"', "“", "”", ".", "!", "?",
                     "—", "–"])
# Words that open an answer without answering ("the answer is 40").
_OPENERS = frozenset(["answer", "according", "based", "source", "sources", "document",
                      "documents", "context", "yes", "no"])
_CITE = re.compile(r"\[\d+\]")
_TOKEN = re.compile(r"\[\d+\]|(?:[A-Z]\.)+(?!\w)|[$€£]?\w(?:(?:[\w'’./-]|,(?=\d{3}))*\w)?%?"
                    r"|[^\w\s]")
# Function words the check's list lacks, and the verbs that join a subject to what it is.
_PREPOSITIONS = frozenset(["among", "amongst", "around", "across", "along", "behind", "beside",
                           "besides", "near", "toward", "towards", "onto", "beyond", "despite"])
_COPULAS = frozenset(["is", "are", "was", "were", "be", "been", "being", "has", "have", "had"])
# A number joined to what it counts: "14-story", "3-day".
_COUNTED = re.compile(r"(\d[\d,.]*)-[^\W\d_]+")
_stemmer = Stemmer.Stemmer("english")


def factual(question: str) -> bool:
    """Whether `question` asks for a fact a few words can give: its first question word is
    who, whom, whose, where, when, which or what, or how many (much, long ...)."""
    doc = nlp()(question)
    for token in doc:
        word = token.lower_
        if word in _QUESTION_WORDS:
            if word == "how":
                after = token.nbor().lower_ if token.i + 1 < len(doc) else ""
                return after in _HOW_MUCH
            return word in _FACTUAL
    return False


def _known(question: str, search: str) -> tuple[set[str], set[str]]:
    words = [t.lower_ for t in nlp()(f"{question}\n{search}") if t.is_alpha or t.like_num]
    return set(words), set(_stemmer.stemWords(words))


def _function(token: Token) -> bool:
    return token.lower_ in STOPWORDS or token.lower_ in _PREPOSITIONS


def _named(token: Token) -> bool:
    """A name (`is_name`), or a capitalised word that opens the sentence ("Beyoncé sang")."""
    return is_name(token) or (
        token.i == 0 and token.text[:1].isupper() and not _function(token))


def words_of(text: str) -> Doc:
    """`text` as spaCy tokens, a word being what whitespace and punctuation at its ends bound:
    "all-MiniLM-L6-v2", "U.S", "1,000" and "chunk_size" stay whole."""
    found = list(_TOKEN.finditer(text))
    words = [m.group() for m in found]
    spaces = [m.end() < len(text) and text[m.end()].isspace() for m in found]
    return Doc(nlp().vocab, words=words, spaces=spaces)


def _echoes(token: Token, known: set[str], stems: set[str]) -> bool:
    """Whether a word of the sentence is a content word the question says."""
    word = token.lower_
    return not _function(token) and (word in known or _stemmer.stemWord(word) in stems)


def _runs(doc: Doc, known: set[str], stems: set[str]) -> list[Span]:
    """Stretches of the sentence that say what the question does not: cut at the question's
    content words and at breaking punctuation, function words at either end left out."""
    runs: list[Span] = []
    start: int | None = None

    def close(end: int) -> None:
        if start is None:
            return
        first, last = start, end
        while first < last and (_function(doc[first]) or doc[first].is_punct):
            first += 1
        while last > first and (_function(doc[last - 1]) or doc[last - 1].is_punct):
            last -= 1
        if last > first:
            runs.append(doc[first:last])

    for token in doc:
        echoes = _echoes(token, known, stems) or token.lower_ in _OPENERS
        if (echoes or token.text in _BREAKS or token.lower_ in _COPULAS
                or _CITE.fullmatch(token.text)):
            close(token.i)
            start = None
        elif start is None:
            start = token.i
    close(len(doc))
    return runs


def _phrases(run: Span) -> list[Span]:
    """A run cut at its function words, but for those inside a name."""
    doc = run.doc
    phrases: list[Span] = []
    start: int | None = None
    for token in run:
        inside = (token.lower_ in _JOINERS and start is not None and token.i + 1 < run.end
                  and (_named(doc[token.i - 1]) or doc[token.i - 1].lower_ in _JOINERS)
                  and (_named(doc[token.i + 1]) or doc[token.i + 1].lower_ in _JOINERS))
        if (_function(token) or token.is_punct) and not inside:
            if start is not None:
                phrases.append(doc[start : token.i])
            start = None
        elif start is None:
            start = token.i
    if start is not None:
        phrases.append(doc[start : run.end])
    return [p for p in phrases if p.text.strip(" -/&")]


def _name_part(phrase: Span) -> Span:
    """The name in a phrase, the words after it left out: "Jerome Green became" -> "Jerome
    Green"; the phrase itself when it holds no name."""
    doc = phrase.doc
    start = next((t.i for t in phrase if _named(t)), None)
    if start is None:
        return phrase
    end = start + 1
    while end < phrase.end and (_named(doc[end]) or doc[end].lower_ in _JOINERS
                                or is_number(doc[end])):
        end += 1
    while end > start + 1 and doc[end - 1].lower_ in _JOINERS:
        end -= 1
    return doc[start:end]


def _aside(span: Span) -> bool:
    """Whether a span stands inside brackets."""
    before = span.doc[: span.start]
    return sum(t.text == "(" for t in before) > sum(t.text == ")" for t in before)


def _fit(asked: AnswerType, percent: bool = False) -> Callable[[Span], int | None]:
    """How well a phrase is of the kind `asked`: 0 best, None not at all. An X of "which X"
    is best the phrase with X in it, then a name, then a number; a share (`percent`) is best
    a number with % or percent."""
    nouns = asked.nouns

    def quantity(phrase: Span) -> int | None:
        if not any(is_number(t) for t in phrase):
            return None
        shown = any(t.text.endswith("%") or t.lower_.startswith("percent") for t in phrase)
        return 0 if shown or not percent else 1

    def thing(phrase: Span) -> int | None:
        doc = phrase.doc
        beside = [doc[i] for i in (phrase.start - 1, phrase.end) if 0 <= i < len(doc)]
        if set(_stemmer.stemWords([t.lower_ for t in [*phrase, *beside]])) & nouns:
            return 0  # it is an X, or stands beside one: "Professor Jerome Green"
        if any(_named(t) for t in phrase):
            return 1
        return 2 if any(is_number(t) for t in phrase) else None

    def kind(test: Callable[[Token], bool]) -> Callable[[Span], int | None]:
        return lambda phrase: 0 if any(test(t) for t in phrase) else None

    match asked.kind:
        case "quantity":
            return quantity
        case "time":
            return kind(lambda t: is_number(t) or is_calendar(t))
        case "agent":  # a name, not a path: "/v1/documents" deletes nothing
            return kind(lambda t: _named(t) and "/" not in t.text)
        case "place":
            return kind(_named)
        case "thing":
            return thing


def _nearness(span: Span, said: Sequence[int]) -> float:
    """How close a span stands to the question's words in its sentence (`said`: their
    places): the sum over them of 1 / (1 + distance in words)."""
    return sum(1.0 / (1 + min(abs(at - span.start), abs(at - (span.end - 1)))) for at in said)


def _span_words(span: Span) -> int:
    return sum(1 for t in span if not t.is_punct)


def short_span(question: str, search: str, sentence: str) -> str | None:
    """The words of `sentence` (an answer sentence, its citations left in or not) that answer
    `question` (`search`: its retrieval query, "" when the question itself), or None."""
    if not factual(question):
        return None
    doc = words_of(" ".join(sentence.split()))
    known, stems = _known(question, search)
    runs = _runs(doc, known, stems)
    if not runs:
        return None
    said = [t.i for t in doc if _echoes(t, known, stems)]
    asked = answer_type(question)
    ranked: list[tuple[int, bool, float, int, Span]] = []
    if asked is None:  # a run that names something or counts, before others; the nearest
        ranked = [(0 if any(_named(t) or is_number(t) for t in r) else 1, _aside(r),
                   -_nearness(r, said), r.start, r) for r in runs
                  if _span_words(r) <= MAX_WORDS]
    else:  # the phrase of the kind asked that fits best, then the nearest
        fit = _fit(asked, "percent" in question.casefold())
        for run in runs:
            for phrase in _phrases(run):
                rank = fit(phrase)
                if rank is None:
                    continue
                if asked.kind in ("agent", "place") or asked.kind == "thing" and rank < 2:
                    phrase = _name_part(phrase)
                if _span_words(phrase) <= MAX_WORDS:  # "(John Zahm's brother)" describes
                    ranked.append((rank, _aside(phrase), -_nearness(phrase, said),
                                   phrase.start, phrase))
    if not ranked:
        return None
    chosen = min(ranked, key=lambda r: r[:4])[4]
    counted = _COUNTED.fullmatch(chosen.text)
    if asked is not None and asked.kind == "quantity" and counted:
        return counted.group(1)  # "14-story": the number is the answer
    return chosen.text


def locate(words: str, quotes: Sequence[Quote], first: int | None) -> ShortAnswer:
    """`words` as the evidence has them: the first quote (`first`, then the rest in order)
    whose text holds them, case and spacing aside; without a place when none does."""
    order = ([first] if first is not None else []) + [
        i for i in range(len(quotes)) if i != first]
    wanted = " ".join(words.split()).casefold()
    for index in order:
        quote = quotes[index]
        at = _find(quote.text, wanted)
        if at is not None:
            begin, end = at
            return ShortAnswer(text=quote.text[begin:end], quote=index,
                               start=quote.start + begin, end=quote.start + end)
    return ShortAnswer(text=words)


def _find(text: str, wanted: str) -> tuple[int, int] | None:
    """Where `wanted` (spaces single, case-folded) stands in `text`, whole words only."""
    folded: list[str] = []
    places: list[int] = []
    for at, char in enumerate(text):  # single spaces, each character's place in `text`
        if char.isspace():
            if folded and folded[-1] != " ":
                folded.append(" ")
                places.append(at)
            continue
        for c in char.casefold():
            folded.append(c)
            places.append(at)
    flat = "".join(folded)
    start = 0
    while (found := flat.find(wanted, start)) >= 0:
        end = found + len(wanted)
        before = flat[found - 1] if found else " "
        after = flat[end] if end < len(flat) else " "
        if not before.isalnum() and not after.isalnum():
            return places[found], places[end - 1] + 1
        start = found + 1
    return None


def lists_table_rows(ctx: AskContext) -> bool:
    """A list question answered from table rows: each row is one item, so a few words would
    name one of them. (A list in prose, "Navy Blue and Gold", can still be a short answer.)"""
    return (asks_for_list(ctx.question) and ctx.evidence is not None
            and any(item.sentence.header for _, group in ctx.evidence.groups for item in group))


class ShortAnswerStage:
    """Ask stage: the short answer of a factual question, from the checked answer."""

    name = "short"

    def __init__(self, check: CheckStage) -> None:
        self.check = check

    @quiet
    def run(self, ctx: AskContext) -> AskContext:
        if (ctx.mode == "abstained" or ctx.prompt is None or not factual(ctx.question)
                or lists_table_rows(ctx)):  # a few words would name one row of many
            return ctx
        first: int | None = 0
        if ctx.mode == "quote":
            if not ctx.quotes:
                return ctx
            sentence = ctx.quotes[0].text
        else:
            passed = next((s for s in ctx.sentences if s.supported), None)
            if passed is None:
                return ctx
            sentence, first = passed.text, passed.quote
        words = short_span(ctx.question, ctx.search, sentence)
        if words is None:
            return ctx
        short = locate(words, ctx.quotes, first)
        if not self.check.judge(ctx).verdict(short.text).passed:
            return ctx
        return replace(ctx, short_answer=short)
