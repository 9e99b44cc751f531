"""The answer check: each answer sentence against the evidence, deterministic, no model judge.

A sentence is supported when every number and name in it occurs in the sources it cites (all
the prompt's sources when it cites none) and enough of its content words (stemmed, function
words left out) occur in one evidence sentence of those sources: its best supporting quote.
A table row is read with its header ("Extension: .pdf; Format: PDF"), but anchors a claim by
its own cells only; a list question's answer may lean on the rows of one table shown together,
each of its items ("PDF", "DOCX files") on one row ("You can upload PDF and DOCX files.").
That asks only whether the claim occurs somewhere; the check that asks whether it answers the
question (`answer_support`, the default: setting `check_answers_question`) also wants
the claim in the evidence that holds the question's key terms (a sentence, or it and the one
next to it), and a span of the kind the question asks for (`ask.answer_type`).

One rule for the streamed and the final answer: a `Judge` gives each sentence its verdict as
soon as the sentence is complete (the gate, `ask.gate`, asks while the answer is generated),
`shown_text` says what of the answer those verdicts let out, and `CheckStage` settles the final
answer from the same verdicts, so the text let out while streaming is always its beginning.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

from rag.ask.answer_type import answer_type
from rag.ask.claims import (
    MIN_ANCHOR,
    Candidate,
    answer_support,
    check_sentence,
    content_words,
    makes_claim,
    placed_sentences,
)
from rag.ask.context import AskContext, quiet
from rag.ask.evidence import MIN_TABLE_SCORE, asks_for_list
from rag.documents.sentences import with_header
from rag.types import (
    NO_ANSWER,
    AnswerMode,
    Quote,
    ScoredSentence,
    SentenceCheck,
    SentenceVerdict,
)

_DECLINES = re.compile(r"\b(?:do|does) not (?:contain|mention|say)\b|\bcannot (?:answer|find)\b")

UnsupportedAnswer = Literal["quote", "flag", "drop"]
# A list question answered with a table's rows quotes at most this many of them.
MAX_QUOTED_ROWS = 8


@dataclass(frozen=True)
class _Shown:
    """An evidence sentence of a prompt source."""

    item: ScoredSentence
    source: int
    filename: str


class Judge:
    """The check of one ask's answer sentences against the evidence its prompt showed."""

    def __init__(self, question: str, pool: Sequence[Candidate], sources: dict[int, str],
                 min_overlap: float, search: str = "", answers_question: bool = True,
                 min_anchor: float = MIN_ANCHOR) -> None:
        self.question = question
        self.pool = pool  # the prompt's evidence sentences, best-ranked first
        self.sources = sources  # source number -> its text as the prompt showed it
        self.min_overlap = min_overlap
        self.search = search  # the retrieval query ("" when it is the question)
        # True: `answer_support` (the claim answers the question); False: the claim's
        # names and numbers occur in its sources (`check_sentence`).
        self.answers_question = answers_question
        self.min_anchor = min_anchor
        self.asked = answer_type(question) if answers_question else None
        self.listing = asks_for_list(question)  # a table's rows may answer it together
        self._support: dict[tuple[str, str], tuple[int, ...]] = {}

    def verdict(self, sentence: str, sep: str = "") -> SentenceVerdict:
        """The verdict on one complete sentence of the answer (`sep`: the whitespace before
        it, "" for the first). A sentence that declines ("the documents do not say") never
        passes."""
        declines = bool(_DECLINES.search(sentence))
        if not makes_claim(sentence):
            return SentenceVerdict(sentence, sep, None, None, declines)
        if self.answers_question:
            # The answer's first sentence is the one that answers: it must be of the kind
            # asked; those after it may add to it (the beekeeper's name, then her hives).
            asked = None if sep else self.asked
            check, support = answer_support(
                sentence, self.question, self.search, asked, self.pool, self.sources,
                self.min_overlap, self.min_anchor, self.listing,
                self.asked.nouns if self.asked is not None else frozenset())
            self._support[sep, sentence] = support
            best = support[0] if support else None
        else:
            check, best = check_sentence(sentence, self.question, self.pool, self.sources,
                                         self.min_overlap)
            self._support[sep, sentence] = () if best is None else (best,)
        if declines:
            check = replace(check, supported=False)
        return SentenceVerdict(sentence, sep, check, best, declines)

    def support(self, verdict: SentenceVerdict) -> tuple[int, ...]:
        """Every evidence sentence (index into `pool`) that supports a verdict's sentence: its
        best one, or each table row that supports an item of a list."""
        if (verdict.sep, verdict.text) not in self._support:
            self.verdict(verdict.text, verdict.sep)
        found = self._support.get((verdict.sep, verdict.text), ())
        return found or ((verdict.best,) if verdict.best is not None else ())

    def verdicts(self, text: str, known: Sequence[SentenceVerdict] = ()) -> list[SentenceVerdict]:
        """The verdict on each sentence of the answer `text`; those `known` (given on its first
        sentences while it streamed) are kept, not given again."""
        out: list[SentenceVerdict] = []
        for sep, sentence in placed_sentences(text):
            n = len(out)
            same = n < len(known) and (known[n].sep, known[n].text) == (sep, sentence)
            out.append(known[n] if same else self.verdict(sentence, sep))
            if not same:
                known = ()
        return out


def shown_text(verdicts: Sequence[SentenceVerdict], unsupported: UnsupportedAnswer,
               ended: bool) -> str:
    """What of an answer its verdicts let out: the sentences shown, in order, each after the
    whitespace before it. Before the answer has `ended`, only up to the first sentence whose
    fate is not settled yet; so what it says grows as sentences come, never changes."""
    text = ""
    for verdict, shown in zip(verdicts, _shown(verdicts, unsupported, ended), strict=True):
        if shown is None:
            break
        if shown:
            text += (verdict.sep if text else "") + verdict.text
    return text


def _shown(verdicts: Sequence[SentenceVerdict], unsupported: UnsupportedAnswer,
           ended: bool) -> list[bool | None]:
    """Per sentence: shown, not shown, or not settled yet (None).

    `quote`: a sentence that makes a claim is shown when it passed; one that makes none (a lone
    citation) goes with the claim before it, or at the start with the first claim. `flag`:
    everything, unless the answer opens by declining. `drop`: everything when every claim
    passed, else nothing; settled only at the end.
    """
    claims = [n for n, v in enumerate(verdicts) if v.check is not None]
    settled: bool | None
    if unsupported == "drop":
        settled = bool(claims) and all(
            (v.passed or v.check is None) and not v.declines for v in verdicts)
        return [settled if ended else None] * len(verdicts)
    if unsupported == "flag":
        settled = not verdicts[claims[0]].declines if claims else True if ended else None
        return [settled] * len(verdicts)
    owner = claims[0] if claims else None
    shown: list[bool | None] = []
    for n, verdict in enumerate(verdicts):
        owner = n if verdict.check is not None else owner
        shown.append(verdicts[owner].passed if owner is not None else False if ended else None)
    return shown


class CheckStage:
    """Ask stage: check the generated answer against its evidence and settle what to answer.

    `unsupported`: what an answer with unsupported sentences becomes. `quote` keeps its
    supported sentences, or when none is, answers with the best evidence sentence as a quote
    (also when the model declined but that sentence's cosine to the question reaches
    `min_quote_score`: a small model declines wrongly); `flag` keeps it as it is (each sentence
    marked in `sentences`) unless it opens by declining; `drop` abstains. Streamed, the same
    rule lets each sentence out once its fate is settled (`shown_text`), and the answer the
    stage settles begins with whatever was let out.
    """

    name = "check"

    def __init__(self, min_overlap: float, unsupported: UnsupportedAnswer,
                 quotes: int = 4, min_quote_score: float = 0.5,
                 answers_question: bool = True, min_anchor: float = MIN_ANCHOR) -> None:
        self.min_overlap = min_overlap
        self.unsupported = unsupported
        self.quotes = quotes
        self.min_quote_score = min_quote_score
        self.answers_question = answers_question  # the check `Judge` gives each sentence
        self.min_anchor = min_anchor

    def judge(self, ctx: AskContext) -> Judge:
        """The check of this ask's answer sentences (the prompt is built)."""
        shown, sources = _sources(ctx)
        pool = [Candidate(with_header(s.item.sentence), s.source, s.item.sentence.document_id,
                          s.item.sentence.id, s.item.sentence.header, s.item.sentence.text)
                for s in shown]
        return Judge(ctx.question, pool, sources, self.min_overlap, ctx.search,
                     self.answers_question, self.min_anchor)

    @quiet
    def run(self, ctx: AskContext) -> AskContext:
        assert ctx.prompt is not None and ctx.evidence is not None
        shown, _ = _sources(ctx)
        judge = self.judge(ctx)
        verdicts = judge.verdicts(ctx.generated, ctx.verdicts)
        text = shown_text(verdicts, self.unsupported, ended=True)
        declined = not ctx.generated or any(v.declines for v in verdicts)
        claims = [] if declined and not text else [v for v in verdicts if v.check is not None]
        checks = [v.check for v in claims if v.check is not None]
        supported = [c for c in checks if c.supported]
        groundedness = len(supported) / len(checks) if checks else 0.0
        lead: tuple[int, ...] = ()
        mode: AnswerMode = "generated"
        if not text:  # nothing the model said is shown
            text, mode, lead = self._instead(ctx.question, declined, shown)
        support = [judge.support(v) if v.passed else () for v in claims]
        best = [v.best for v in claims]
        quotes, checks = _quotes(shown, checks, best, support, lead, self.quotes)
        return replace(ctx, text=text, mode=mode, groundedness=round(groundedness, 4),
                       sentences=tuple(checks), quotes=quotes)

    def _instead(self, question: str, declined: bool, shown: Sequence[_Shown]
                 ) -> tuple[str, AnswerMode, tuple[int, ...]]:
        """The answer when none of the model's is shown: the best evidence sentence as a quote
        (its index into `shown`), or an abstention; either only when that evidence's cosine to
        the question reaches `min_quote_score`, if the model declined. A list question whose
        best evidence is a table row is answered with its table: the header line, then the
        rows shown (at most `MAX_QUOTED_ROWS`, their indices), one a line."""
        rows = _table_rows(shown) if shown and asks_for_list(question) else ()
        floor = self.min_quote_score
        if rows and content_words(question) & content_words(shown[rows[0]].item.sentence.header
                                                             or ""):
            # The header names what the list asks for ("formats" and "Format"): a row's own
            # cells ("`.docx` | Microsoft Word") say little to the question by themselves.
            floor = min(floor, MIN_TABLE_SCORE)
        strong = bool(shown) and max(shown[i].item.dense for i in rows or (0,)) >= floor
        if (declined and not (self.unsupported == "quote" and strong)
                or self.unsupported == "drop" or not shown):
            return NO_ANSWER, "abstained", ()
        if not rows:  # `shown` is best-ranked first
            return f'{_quoted(shown[0].item.sentence.text)} [{shown[0].source}]', "quote", (0,)
        quoted = tuple(sorted(rows[:MAX_QUOTED_ROWS], key=lambda i: shown[i].item.sentence.start))
        return _table_answer(shown, quoted, len(rows)), "quote", quoted


def _quoted(text: str) -> str:
    return f'"{" ".join(text.split())}"'


def _table_answer(shown: Sequence[_Shown], quoted: Sequence[int], total: int) -> str:
    """A table's rows as an answer: its header line (an exact span of the document) with the
    sources of the rows, then each row quoted on a line of its own, and when not all the
    `total` rows shown are quoted, how many are."""
    cites = "".join(f"[{n}]" for n in sorted({shown[i].source for i in quoted}))
    lines = [f"{_quoted(shown[quoted[0]].item.sentence.header or '')} {cites}"]
    lines += [f"{_quoted(shown[i].item.sentence.text)} [{shown[i].source}]" for i in quoted]
    if len(quoted) < total:
        lines.append(f"({len(quoted)} of {total} rows)")
    return "\n".join(lines)


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
            texts[number] = " ".join(with_header(s.sentence) for s in sentences)
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


def _table_rows(shown: Sequence[_Shown]) -> tuple[int, ...]:
    """When the best evidence is a table row: the indices of the rows of its table shown,
    best-ranked first (empty otherwise)."""
    first = shown[0].item.sentence
    if not first.header:
        return ()
    return tuple(i for i, s in enumerate(shown) if (
        s.item.sentence.document_id, s.item.sentence.header) == (first.document_id, first.header))


def _quotes(
    shown: Sequence[_Shown], checks: list[SentenceCheck], best: list[int | None],
    support: list[tuple[int, ...]], lead: tuple[int, ...], limit: int,
) -> tuple[tuple[Quote, ...], list[SentenceCheck]]:
    """The answer's evidence: the quoted sentences first (if any), each sentence's best support,
    every other sentence that supports one (the rows of a list), then the best-ranked rest up
    to `limit`; and the checks pointing at their best quote."""
    order: list[int] = list(lead)
    for index in [*best, *(i for rows in support for i in rows)]:
        if index is not None and index not in order:
            order.append(index)
    for index in range(len(shown)):
        if len(order) >= limit:
            break
        if index not in order:
            order.append(index)
    supports: dict[int, int] = {}
    for number, rows in enumerate(support, start=1):
        for index in rows if checks[number - 1].supported else ():
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
