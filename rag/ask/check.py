"""The answer check: each answer sentence against the evidence, deterministic, no model judge.

A sentence is supported when every number and name in it occurs in the sources it cites (all
the prompt's sources when it cites none) and enough of its content words (stemmed, function
words left out) occur in one evidence sentence of those sources: its best supporting quote.

One rule for the streamed and the final answer: a `Judge` gives each sentence its verdict as
soon as the sentence is complete (the gate, `ask.gate`, asks while the answer is generated),
`shown_text` says what of the answer those verdicts let out, and `CheckStage` settles the final
answer from the same verdicts, so the text let out while streaming is always its beginning.
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
from rag.types import (
    NO_ANSWER,
    AnswerMode,
    Quote,
    ScoredSentence,
    SentenceCheck,
    SentenceVerdict,
)

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


_DECLINES = re.compile(r"\b(?:do|does) not (?:contain|mention|say)\b|\bcannot (?:answer|find)\b")

UnsupportedAnswer = Literal["quote", "flag", "drop"]


@dataclass(frozen=True)
class _Shown:
    """An evidence sentence of a prompt source."""

    item: ScoredSentence
    source: int
    filename: str


class Judge:
    """The check of one ask's answer sentences against the evidence its prompt showed."""

    def __init__(self, question: str, pool: Sequence[Candidate], sources: dict[int, str],
                 min_overlap: float) -> None:
        self.question = question
        self.pool = pool  # the prompt's evidence sentences, best-ranked first
        self.sources = sources  # source number -> its text as the prompt showed it
        self.min_overlap = min_overlap

    def verdict(self, sentence: str, sep: str = "") -> SentenceVerdict:
        """The verdict on one complete sentence of the answer (`sep`: the whitespace before
        it). A sentence that declines ("the documents do not say") never passes."""
        declines = bool(_DECLINES.search(sentence))
        if not makes_claim(sentence):
            return SentenceVerdict(sentence, sep, None, None, declines)
        check, best = check_sentence(sentence, self.question, self.pool, self.sources,
                                     self.min_overlap)
        if declines:
            check = replace(check, supported=False)
        return SentenceVerdict(sentence, sep, check, best, declines)

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
                 quotes: int = 4, min_quote_score: float = 0.5) -> None:
        self.min_overlap = min_overlap
        self.unsupported = unsupported
        self.quotes = quotes
        self.min_quote_score = min_quote_score

    def judge(self, ctx: AskContext) -> Judge:
        """The check of this ask's answer sentences (the prompt is built)."""
        shown, sources = _sources(ctx)
        pool = [Candidate(s.item.sentence.text, s.source) for s in shown]
        return Judge(ctx.question, pool, sources, self.min_overlap)

    @quiet
    def run(self, ctx: AskContext) -> AskContext:
        assert ctx.prompt is not None and ctx.evidence is not None
        shown, _ = _sources(ctx)
        verdicts = self.judge(ctx).verdicts(ctx.generated, ctx.verdicts)
        text = shown_text(verdicts, self.unsupported, ended=True)
        declined = not ctx.generated or any(v.declines for v in verdicts)
        claims = [] if declined and not text else [v for v in verdicts if v.check is not None]
        checks = [v.check for v in claims if v.check is not None]
        supported = [c for c in checks if c.supported]
        groundedness = len(supported) / len(checks) if checks else 0.0
        lead: int | None = None
        mode: AnswerMode = "generated"
        if not text:  # nothing the model said is shown
            text, mode, lead = self._instead(declined, shown)
        best = [v.best for v in claims]
        quotes, checks = _quotes(shown, checks, best, lead, self.quotes)
        return replace(ctx, text=text, mode=mode, groundedness=round(groundedness, 4),
                       sentences=tuple(checks), quotes=quotes)

    def _instead(self, declined: bool, shown: Sequence[_Shown]
                 ) -> tuple[str, AnswerMode, int | None]:
        """The answer when none of the model's is shown: the best evidence sentence as a quote
        (its index into `shown`), or an abstention."""
        strong = bool(shown) and shown[0].item.dense >= self.min_quote_score
        if (declined and not (self.unsupported == "quote" and strong)
                or self.unsupported == "drop" or not shown):
            return NO_ANSWER, "abstained", None
        quoted = shown[0]  # `shown` is best-ranked first
        words = " ".join(quoted.item.sentence.text.split())
        return f'"{words}" [{quoted.source}]', "quote", 0


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
