"""What kind of answer a question asks for, and whether an answer sentence carries one.

who/whom/whose ask for a person or organisation, where for a place, when (what year, which
date) for a time, how many/much (what number) for a quantity, which X (what X does ...) for an
X; other questions (how, why, what is) are not typed. The question is read with spaCy Matcher
patterns over its blank English tokenizer. No trained spaCy pipeline ships with the install
(its English models come from a model hub, not from PyPI), so there is no NER: the fitting span
of an answer is read from spaCy's lexical attributes instead: a number is `like_num` (digits,
number words, ordinals) or has digits; a time is a number (a year, a clock time, a duration) or
a month or weekday name (the `calendar` module's); a person, organisation or place is a
capitalised word that does not open the sentence, or an identifier (digits, `_`, inner
capitals); an X is a name or number, or X (stemmed) beside a word the question does not have.
Whatever fits must be new: a span the question (or the follow-up's retrieval query) already
says answers nothing.
"""

from __future__ import annotations

import calendar
import functools
import re
from dataclasses import dataclass
from typing import Literal

import spacy
import Stemmer
from spacy.language import Language
from spacy.matcher import Matcher
from spacy.tokens import Doc, Token

AnswerKind = Literal["agent", "place", "time", "quantity", "thing"]

_WH = ["which", "what"]
# Head nouns of "which X" that ask for one of the typed kinds (checked before a plain X).
_KIND_NOUNS: dict[AnswerKind, list[str]] = {
    "agent": ["person", "people", "man", "woman", "individual", "persons"],
    "place": ["city", "country", "place", "town", "location", "venue", "region", "continent",
              "county", "island", "state", "street", "building", "directory", "folder"],
    "time": ["year", "date", "day", "month", "time", "century", "decade", "season", "hour"],
    "quantity": ["number", "amount", "percentage", "percent", "proportion", "quantity"],
}
_HOW_MUCH = ["many", "much", "large", "big", "old", "far", "tall", "high", "heavy"]
# Words after "what X" that show X is a noun (what X does/is ...), not a verb (what happens).
_AUXILIARIES = ["do", "does", "did", "is", "are", "was", "were", "can", "could", "will",
                "would", "should", "has", "have", "had", "may", "might", "must"]
_CALENDAR = frozenset(name.casefold() for name in [
    *calendar.month_name[1:], *calendar.month_abbr[1:], *calendar.day_name, *calendar.day_abbr])
_CITATION = re.compile(r"\[\d+\]")
_PATH = re.compile(r"[\w.-]+/[\w./-]+|`[^`]+`")
_stemmer = Stemmer.Stemmer("english")


@dataclass(frozen=True)
class AnswerType:
    """The kind of answer a question asks for; `nouns`: the stemmed X of "which X"."""

    kind: AnswerKind
    nouns: frozenset[str] = frozenset()


@functools.cache
def nlp() -> Language:
    """spaCy's blank English pipeline: its tokenizer and lexical attributes."""
    return spacy.blank("en")


@functools.cache
def _matcher() -> Matcher:
    matcher = Matcher(nlp().vocab)
    wh = {"LOWER": {"IN": _WH}}
    for kind, nouns in _KIND_NOUNS.items():
        matcher.add(kind, [[wh, {"LOWER": {"IN": nouns}}]])
    matcher.add("agent", [[{"LOWER": {"IN": ["who", "whom", "whose"]}}]])
    matcher.add("place", [[{"LOWER": "where"}]])
    matcher.add("time", [[{"LOWER": "when"}]])
    matcher.add("quantity", [[{"LOWER": "how"}, {"LOWER": {"IN": _HOW_MUCH}}]])
    noun = {"IS_ALPHA": True, "IS_STOP": False}
    matcher.add("thing", [[{"LOWER": "which"}, noun],
                          [{"LOWER": "what"}, noun, {**noun, "OP": "{0,2}"},
                           {"LOWER": {"IN": _AUXILIARIES}}]])
    return matcher


_PRECEDENCE: list[AnswerKind] = ["agent", "place", "time", "quantity", "thing"]


def answer_type(question: str) -> AnswerType | None:
    """The kind of answer `question` asks for, from its first wh-word; None when untyped."""
    doc = nlp()(question)
    first = next((t.i for t in doc if t.lower_ in {"who", "whom", "whose", "where", "when",
                                                     "which", "what", "how"}), None)
    if first is None:
        return None
    vocab = doc.vocab.strings
    labels = {vocab[label] for label, start, _ in _matcher()(doc) if start == first}
    kinds = [kind for kind in _PRECEDENCE if kind in labels]  # the most specific first
    if not kinds:
        return None
    kind = kinds[0]
    if kind != "thing":
        return AnswerType(kind)
    nouns = []
    for token in doc[first + 1 : first + 4]:
        if not token.is_alpha or token.is_stop:
            break
        nouns.append(token.lower_)
    return AnswerType(kind, frozenset(_stemmer.stemWords(nouns)))


def is_calendar(token: Token) -> bool:
    """A month or weekday name, or its abbreviation."""
    return token.norm_.casefold() in _CALENDAR


def is_number(token: Token) -> bool:
    return token.like_num or any(c.isdigit() for c in token.text)


def _identifier(token: Token) -> bool:
    text = token.text
    return any(c.isdigit() or c == "_" for c in text) and any(c.isalpha() for c in text) or (
        text[:1].isalpha() and any(c.isupper() for c in text[1:]))


def is_name(token: Token) -> bool:
    """A capitalised word that is no function word or date, or an identifier. The sentence's
    first word counts only as the start of a longer name (or an identifier): capitalised there,
    any word is."""
    if _identifier(token):
        return True
    if not token.text[:1].isupper() or token.is_stop or token.norm_.casefold() in _CALENDAR:
        return False
    if token.i > 0:
        return True
    after = token.nbor() if token.i + 1 < len(token.doc) else None
    return after is not None and after.text[:1].isupper() and not after.is_stop


def fits(sentence: str, asked: AnswerType, said: str) -> bool:
    """Whether `sentence` carries a span of the kind `asked` that `said` (the question and
    the retrieval query) does not already hold."""
    text = _CITATION.sub(" ", sentence)
    doc = nlp()(text)
    known = {t.lower_ for t in nlp()(said)}
    new = [t for t in doc if t.lower_ not in known and not t.is_punct]
    match asked.kind:
        case "quantity":
            return any(is_number(t) for t in new)
        case "time":
            return any(is_number(t) or is_calendar(t) for t in new)
        case "agent":
            return any(is_name(t) for t in new)
        case "place":
            return any(is_name(t) for t in new) or any(
                m.group().casefold() not in said.casefold() for m in _PATH.finditer(text))
        case "thing":
            return any(is_name(t) or is_number(t) for t in new) or _beside_noun(doc, asked, known)


def _beside_noun(doc: Doc, asked: AnswerType, known: set[str]) -> bool:
    """Whether X of "which X" stands in `doc` next to (two words either side) a content word
    the question does not have: "the rag bench command"."""
    stems = _stemmer.stemWords([t.lower_ for t in doc])
    for token, stem in zip(doc, stems, strict=True):
        if stem not in asked.nouns:
            continue
        near = doc[max(0, token.i - 2) : token.i + 3]
        if any(t.is_alpha and not t.is_stop and t.lower_ not in known for t in near):
            return True
    return False
