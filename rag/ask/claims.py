"""Claims of an answer against its evidence: the words and facts of a sentence, and whether the
evidence supports it (`check_sentence`: its names and numbers occur in the cited sources and its
content words in one evidence sentence) or answers the question with it
(`answer_support`: the claim in the evidence that holds the question's key terms, of the
kind the question asks for). `ask.check` turns these into verdicts and the final answer.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace

import Stemmer

from rag.ask.answer_type import AnswerType, fits
from rag.documents.sentences import cells
from rag.generation.stopping import split_sentences
from rag.types import SentenceCheck

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
    document: str = ""
    ordinal: int | None = None  # its sentence id: the next sentence of the document is one on
    header: str | None = None  # a table row's header line: the rows of one table go together
    row: str = ""  # a table row's own text, its cells

    @functools.cached_property
    def words(self) -> set[str]:
        return content_words(self.text)

    @functools.cached_property
    def own(self) -> set[str]:
        """The words the candidate itself says: a table row's cells without its header's words
        (they are in every row, so they anchor none), else all its words."""
        return content_words(self.row) if self.header else self.words

    @functools.cached_property
    def cells(self) -> list[tuple[set[str], set[str]]]:
        """A table row's columns: the words of each header cell and of the row's cell under
        it (empty for text, or a row whose cells do not pair with the header's)."""
        if not self.header:
            return []
        names, values = cells(self.header), cells(self.row)
        if len(names) != len(values):
            return []
        return [(content_words(n), content_words(c)) for n, c in zip(names, values, strict=True)]

    def next_to(self, other: Candidate) -> bool:
        """Whether `other` is the sentence just before or after this one in its document."""
        return (self.ordinal is not None and other.ordinal is not None
                and self.document == other.document and abs(self.ordinal - other.ordinal) == 1)


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


# Share of the question's key terms the evidence window of a claim must hold: the window that
# answers the question, not any sentence of the sources (measured: issue 19).
MIN_ANCHOR = 0.5


def key_terms(question: str, search: str = "") -> list[set[str]]:
    """The question's key terms: its content words, and those of its retrieval query when it
    is not the question itself (a follow-up's carries the earlier turns' terms)."""
    terms = [content_words(question)]
    if search and search != question:
        terms.append(content_words(search))
    return [t for t in terms if t]


def anchor_share(words: set[str], terms: Sequence[set[str]]) -> float:
    """How much of the question the words of an evidence window hold: the best share over
    the question's term sets (1.0 when it has no key terms)."""
    return max((len(t & words) / len(t) for t in terms), default=1.0)


def windows(candidates: Sequence[Candidate], cited: set[int],
            listing: bool = False) -> list[tuple[int, ...]]:
    """The evidence a claim may lean on: each candidate of the cited sources alone
    (best-ranked first), then each with the sentence next to it when that was shown too, then,
    for a question that asks for a list (`listing`), the rows of each table shown."""
    alone = [i for i, c in enumerate(candidates) if c.source in cited]
    out: list[tuple[int, ...]] = [(i,) for i in alone]
    # Rows of a table read on only as a list's rows (`item_rows`), not as sentences do.
    out += [(i, j) for i in alone for j in alone if i < j and not candidates[i].header
            and not candidates[j].header and candidates[i].next_to(candidates[j])]
    tables: dict[tuple[str, str], list[int]] = {}
    for i in alone if listing else []:
        header = candidates[i].header
        if header:
            tables.setdefault((candidates[i].document, header), []).append(i)
    out += [tuple(rows) for rows in tables.values() if len(rows) > 1]
    return out


def _anchoring(group: Sequence[Candidate], terms: Sequence[set[str]],
               table: bool) -> tuple[set[str], Sequence[set[str]]]:
    """What a window anchors by, and the terms it must hold. A table row anchors by its own
    cells: its header's words are in every row, so they hold none of the question, and the
    columns the question names ("state", "mean") are asked of, not looked for. A list's table
    window holds what its header names too ("Which formats ...": Format)."""
    header = content_words(group[0].header or "")
    if table:
        return set().union(*(c.own for c in group), header), terms
    own = set().union(*(c.own for c in group))
    named = [t - header for t in terms if t - header] if header else terms
    return own, named or terms


def gives_asked_cells(words: set[str], window: Sequence[Candidate], terms: Sequence[set[str]],
                      said: set[str], nouns: frozenset[str] = frozenset()) -> bool:
    """Whether a claim leaning on table rows carries what the question asks of them: the cell
    under the column its "which X" names (`nouns`: "Which variable ...": Variable), or where it
    names none so, under each column it names ("... by default?": Default) but for those it
    already says half of a row's cell under (the variable's name, the state asked about); a word
    of that cell the question does not say ("8000")."""
    wanted: list[set[str]] = []
    for c in window:
        named = [cell for name, cell in c.cells if name & nouns]
        named = named or [cell for name, cell in c.cells if any(name & t for t in terms)
                          and len(cell & said) * 2 < len(cell)]
        wanted += [cell - said for cell in named if cell - said]
    return not wanted or any(words & cell for cell in wanted)


# Where a list answer's items part: commas, semicolons, "and", "or".
_ITEMS = re.compile(r"[,;]|\b(?:and|or)\b")


def item_rows(sentence: str, rows: Sequence[Candidate], terms: Sequence[set[str]], said: str,
              min_overlap: float, nouns: frozenset[str] = frozenset()
              ) -> tuple[int, ...] | None:
    """The rows (indices into `rows`, of one table) that support a list answer item by item:
    each item of `sentence` (its parts between commas, "and", "or") must have its names and
    numbers and `min_overlap` of its content words in one row, words the question (`said`) or
    the table's header says aside, and carry the cell the question asks of that row; None when
    an item has no such row (a sentence that mixes facts of different rows)."""
    said_words = {w.casefold() for w in _WORD.findall(f"{said}\n{rows[0].header or ''}")}
    free = content_words(said) | content_words(rows[0].header or "")
    found: list[int] = []
    for item in _ITEMS.split(_CITATION.sub(" ", sentence)):
        words = content_words(item) - free
        new = [f for f in facts(item) if not all(
            p.casefold() in said_words for p in _WORD.findall(f))]
        if not words and not new:
            continue
        row = next((n for n, c in enumerate(rows) if _holds(c, words, new, min_overlap)
                    and gives_asked_cells(words, [c], terms, content_words(said), nouns)), None)
        if row is None:
            return None
        found.append(row)
    return tuple(dict.fromkeys(found)) or None


def _holds(row: Candidate, words: set[str], new_facts: Sequence[str],
           min_overlap: float) -> bool:
    """Whether one row holds an item: its new names and numbers, and enough of its words."""
    row_words = {w.casefold() for w in _WORD.findall(row.text)}
    return all(_occurs(f, row.text, row_words) for f in new_facts) and (
        not words or len(words & row.words) / len(words) >= min_overlap)


def answer_support(
    sentence: str,
    question: str,
    search: str,
    asked: AnswerType | None,
    candidates: Sequence[Candidate],
    sources: dict[int, str],
    min_overlap: float,
    min_anchor: float = MIN_ANCHOR,
    listing: bool = False,
    nouns: frozenset[str] = frozenset(),
) -> tuple[SentenceCheck, tuple[int, ...]]:
    """Check one answer sentence as an answer to `question` (`search`: its retrieval query,
    "" when it is the question itself), with every candidate that supports it: the best
    window's first sentence, or each row of a table that supports an item of it (the first is
    the sentence's best quote).

    Beyond `check_sentence` (its names and numbers occur in the sources it cites), the claim
    must come from the evidence that answers the question: a window (a sentence, or it and
    the one next to it) holding `min_anchor` of the question's key terms (a table row by its
    own cells, not its header's), every name and number of the sentence the question does not
    say, and `min_overlap` of its new content words (and, from a table row, the cell the
    question asks for: `gives_asked_cells`); and the sentence must carry a span of the kind the
    question asks for (`asked`). A question that asks for a list (`listing`) may be answered
    from the rows of one table together, each item of the sentence from one row (`item_rows`).
    `nouns`: the X of the question's "which X" (`AnswerType.nouns`), for every sentence of the
    answer."""
    said = f"{question}\n{search}"
    checked, _ = check_sentence(sentence, question, (), sources, min_overlap)
    cited = cited_sources(sentence) & set(sources) or set(sources)
    terms = key_terms(question, search)
    said_words = {w.casefold() for w in _WORD.findall(said)}
    new_facts = [f for f in facts(sentence)
                 if not all(p.casefold() in said_words for p in _WORD.findall(f))]
    # Words the question or its query already say are no claim.
    words = content_words(_CITATION.sub(" ", sentence)) - content_words(said)
    best: tuple[int, ...] = ()
    best_overlap = 0.0
    for window in windows(candidates, cited, listing) if words else []:
        group = [candidates[i] for i in window]
        held = set().union(*(c.words for c in group))
        # A list question reads rows as a table's: by its header, item by item.
        table = listing and bool(group[0].header)
        if anchor_share(*_anchoring(group, terms, table)) < min_anchor:
            continue
        if table:
            rows = item_rows(sentence, group, terms, said, min_overlap, nouns)
            support = tuple(window[r] for r in rows) if rows else ()
        else:
            text = " ".join(c.text for c in group)
            text_words = {w.casefold() for w in _WORD.findall(text)}
            fine = all(_occurs(f, text, text_words) for f in new_facts) and gives_asked_cells(
                words, group, terms, content_words(said), nouns)
            support = window[:1] if fine else ()
        overlap = len(words & held) / len(words)
        if support and overlap > best_overlap:
            best, best_overlap = support, overlap
    fitting = asked is None or fits(sentence, asked, said)
    supported = (not checked.missing and bool(best) and best_overlap >= min_overlap
                 and fitting)
    return replace(checked, supported=supported, overlap=round(best_overlap, 4)), best


def makes_claim(sentence: str) -> bool:
    """Whether a sentence says anything (a lone citation or label does not)."""
    return bool(content_words(_CITATION.sub(" ", sentence)))


def answer_sentences(text: str) -> list[str]:
    """The sentences of an answer that make a claim."""
    return [s for s in split_sentences(text) if makes_claim(s)]


def placed_sentences(text: str) -> list[tuple[str, str]]:
    """The sentences of `text` (`split_sentences`), each after the whitespace before it (""
    for the first): joined, they are `text` stripped."""
    placed: list[tuple[str, str]] = []
    end = 0
    for sentence in split_sentences(text):
        start = text.index(sentence, end)
        placed.append((text[end:start] if placed else "", sentence))
        end = start + len(sentence)
    return placed
