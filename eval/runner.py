"""Run a suite against a target: ingest its corpus, ask every question, score and aggregate."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Literal

from eval import metrics as m
from eval.suites import Suite, SuiteItem
from eval.targets import Advance, Retrieved, Target, git_commit
from rag.types import Answer, Turn

RESULT_SCHEMA = 1
RETRIEVAL_DEPTH = 10
SNIPPET_CHARS = 300
EVIDENCE_K = (1, 3)
MODES = ("generated", "quote", "abstained")
FOLLOWUP_SCORES = ("hit@1", "hit@3", "mrr")

OnItem = Callable[["ItemResult"], None]


@dataclass(frozen=True)
class RunOptions:
    top_k: int | None = None
    concurrency: int = 1
    limit: int | None = None
    retrieval_only: bool = False
    skip: int = 0  # items left out before the first one asked (with `limit`: a fixed slice)
    # What a follow-up turn is asked after: "own", the target's own answers to the earlier
    # turns of its conversation in this run (what a user's conversation holds), or
    # "reference", the suite's reference answers (gold terms reach retrieval: an upper bound).
    history: Literal["own", "reference"] = "own"


@dataclass(frozen=True)
class ResultChunk:
    """A retrieved or cited chunk as the result file keeps it (text cut to a snippet)."""

    document: str
    filename: str
    chunk_id: int
    score: float
    text: str
    number: int | None = None


@dataclass(frozen=True)
class ResultQuote:
    """A quote of the answer's evidence, in the service's order (text cut to a snippet)."""

    document: str
    filename: str
    start: int
    end: int
    page: int | None
    score: float
    source: int
    supports: int | None
    text: str


@dataclass(frozen=True)
class ItemResult:
    """One question's outcome: the answer, what was retrieved, scores and costs."""

    id: str
    question: str
    answerable: bool
    references: tuple[str, ...]
    relevant: Mapping[str, int]
    asked: bool = False
    answer: str = ""
    short_answer: str | None = None  # the few words given for a factual question, if any
    abstained: bool = False
    mode: str = ""
    generated_text: str = ""
    repeats_sentence: bool = False
    retrieved: tuple[ResultChunk, ...] = ()
    citations: tuple[ResultChunk, ...] = ()
    evidence: tuple[ResultQuote, ...] = ()
    ranking_source: str = "citations"
    scores: Mapping[str, float | None] = field(default_factory=dict)
    timings: Mapping[str, float] = field(default_factory=dict)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached: bool = False
    error: str | None = None
    conversation: str = ""
    turn: int = 1
    # Where a follow-up's earlier answers came from: "own" (this run's answers), "reference"
    # (the suite's reference answers) or "suite" (a history the suite gives, e.g. exported
    # feedback: what the service really answered then).
    history_source: str = ""


@dataclass(frozen=True)
class Corpus:
    """How document ids of the target map to the suite's document keys."""

    keys: Mapping[str, str]  # document id -> canonical key
    aliases: Mapping[str, str]  # any key or filename -> canonical key

    def key(self, document_id: str, filename: str) -> str:
        return self.keys.get(document_id) or self.aliases.get(filename, filename)

    def grades(self, relevant: Mapping[str, int]) -> dict[str, int]:
        """Relevance keyed by canonical keys (duplicate documents share one)."""
        out: dict[str, int] = {}
        for key, grade in relevant.items():
            canonical = self.aliases.get(key, key)
            out[canonical] = max(out.get(canonical, 0), grade)
        return out


def ingest_corpus(suite: Suite, target: Target, advance: Advance) -> Corpus:
    """Ingest the suite's documents and learn which target document holds which key."""
    ids = target.ingest(suite.corpus, advance)  # key -> document id
    keys: dict[str, str] = {}
    for key, doc_id in ids.items():
        keys.setdefault(doc_id, key)  # documents with the same bytes share the first key
    aliases = {key: keys[doc_id] for key, doc_id in ids.items()}
    names = Counter(d.filename for d in suite.corpus)
    for doc in suite.corpus:
        if names[doc.filename] == 1 and doc.key in aliases:
            aliases.setdefault(doc.filename, aliases[doc.key])
    return Corpus(keys, aliases)


def run_suite(
    suite: Suite,
    target: Target,
    corpus: Corpus,
    options: RunOptions,
    on_item: OnItem = lambda _: None,
) -> dict[str, Any]:
    """Ask every question (`concurrency` at once) and return the result document.

    A conversation's turns run in order, one after another (conversations run side by side):
    with `history="own"` each follow-up is asked after the target's own earlier answers.
    """
    started, clock = datetime.now(UTC), time.perf_counter()
    items = suite.limited(options.limit, options.skip).items

    def one(group: Sequence[SuiteItem]) -> list[tuple[SuiteItem, ItemResult]]:
        done: list[ItemResult] = []
        for n, item in enumerate(group):
            asked, source = _asked_after(item, done, options)
            result = evaluate_item(asked, target, corpus, options,
                                   answer_for_history=n + 1 < len(group))
            done.append(replace(result, history_source=source))
            on_item(done[-1])
        return list(zip(group, done, strict=True))

    with ThreadPoolExecutor(max_workers=max(1, options.concurrency)) as pool:
        ran = {id(item): row for pairs in pool.map(one, conversations(items))
               for item, row in pairs}
    rows = [ran[id(item)] for item in items]  # in the suite's order
    return {
        "schema": RESULT_SCHEMA,
        "suite": {"name": suite.name, "format": suite.format, "source": suite.source,
                  "description": suite.description, "items": len(items),
                  "documents": len(suite.corpus)},
        "target": target.name,
        "options": asdict(options),
        **target.describe(),
        "git_commit": git_commit(),
        "started_at": started.isoformat(timespec="seconds"),
        "duration_s": round(time.perf_counter() - clock, 3),
        "aggregates": aggregate(rows) | _followups(rows),
        "items": [asdict(r) for r in rows],
    }


def conversations(items: Sequence[SuiteItem]) -> list[list[SuiteItem]]:
    """The items as groups that run in order: each conversation's turns by turn number, in
    the order its first turn comes; every other item alone."""
    groups: dict[str, list[SuiteItem]] = {}
    for item in items:
        groups.setdefault(item.conversation or f"\0{item.id}", []).append(item)
    return [sorted(group, key=lambda i: i.turn) for group in groups.values()]


def _asked_after(item: SuiteItem, earlier: Sequence[ItemResult], options: RunOptions
                 ) -> tuple[SuiteItem, str]:
    """The item with the history it is asked after, and where that history came from.

    A follow-up whose earlier turns all ran before it in this run gets their own answers
    (with `history="own"`); any other keeps the history the suite gives."""
    if not item.followup:
        return item, ""
    if not item.conversation or len(earlier) != len(item.history):
        return item, "suite"
    if options.history == "reference":
        return item, "reference"
    own = tuple(Turn(r.question, r.answer) for r in earlier)
    return replace(item, history=own), "own"


def evaluate_item(item: SuiteItem, target: Target, corpus: Corpus, options: RunOptions,
                  answer_for_history: bool = False) -> ItemResult:
    """Ask one question and score it; an error is recorded on the item, not raised.

    `answer_for_history`: a later turn of its conversation will be asked after this one, so a
    retrieval-only run asks it too (unscored: `asked` stays False) for its answer text."""
    base = ItemResult(item.id, item.question, item.answerable, item.answers,
                      corpus.grades(item.relevant), conversation=item.conversation,
                      turn=item.turn)
    depth = max(RETRIEVAL_DEPTH, options.top_k or 0)
    try:
        started = time.perf_counter()
        retrieved = target.retrieve(item.question, depth, item.history)
        alone = _without_history(item, target, corpus, depth)
        if options.retrieval_only:
            if retrieved is None:
                raise ValueError(f"{target.name} cannot retrieve without answering.")
            result = score_retrieval(base, retrieved, corpus, time.perf_counter() - started)
            if answer_for_history and options.history == "own" and item.conversation:
                said = target.ask(item.question, options.top_k, item.history)
                result = replace(result, answer=said.text)
        else:
            answer = target.ask(item.question, options.top_k, item.history)
            result = score_item(base, answer, retrieved, corpus)
    except Exception as exc:  # one failing question must not end a long run
        return replace(base, error=f"{type(exc).__name__}: {exc}")
    return replace(result, scores={**result.scores, **alone})


def _without_history(item: SuiteItem, target: Target, corpus: Corpus, depth: int
                     ) -> dict[str, float | None]:
    """A follow-up turn's retrieval scores when its own words alone are searched."""
    if not item.followup:
        return {}
    alone = target.retrieve(item.question, depth)
    if alone is None:
        return {}
    scores = _retrieval_scores(_chunks(alone, corpus), corpus.grades(item.relevant))
    return {f"alone_{name}": scores[name] for name in FOLLOWUP_SCORES}


def _chunks(retrieved: Sequence[Retrieved], corpus: Corpus) -> tuple[ResultChunk, ...]:
    return tuple(ResultChunk(corpus.key(r.document_id, r.filename), r.filename, r.chunk_id,
                             r.score, r.text[:SNIPPET_CHARS]) for r in retrieved)


def _retrieval_scores(chunks: Sequence[ResultChunk], relevant: Mapping[str, int]
                      ) -> dict[str, float | None]:
    ranking = [c.document for c in chunks]
    scores: dict[str, float | None] = {}
    for k in m.K_VALUES:
        scores[f"hit@{k}"] = m.hit_at_k(ranking, relevant, k)
        scores[f"recall@{k}"] = m.recall_at_k(ranking, relevant, k)
    scores["mrr"] = m.reciprocal_rank(ranking, relevant)
    scores["ndcg@10"] = m.ndcg_at_k(ranking, relevant, 10)
    return scores


def score_retrieval(
    base: ItemResult, retrieved: Sequence[Retrieved], corpus: Corpus, seconds: float
) -> ItemResult:
    """Retrieval metrics only (no answer was asked for)."""
    chunks = _chunks(retrieved, corpus)
    return replace(base, retrieved=chunks, ranking_source=f"retriever@{len(chunks)}",
                   scores=_retrieval_scores(chunks, base.relevant),
                   timings={"retrieve_ms": seconds * 1000})


def score_item(
    base: ItemResult, answer: Answer, retrieved: Sequence[Retrieved] | None, corpus: Corpus
) -> ItemResult:
    """Fill in answer, chunks and every per-item metric."""
    cited = tuple(ResultChunk(corpus.key(c.document_id, c.filename), c.filename, c.chunk_id,
                              c.score, c.text[:SNIPPET_CHARS], c.number)
                  for c in answer.citations)
    chunks = _chunks(retrieved, corpus) if retrieved is not None else cited
    abstained = answer.mode == "abstained" or m.is_abstention(answer.text)
    scores = _retrieval_scores(chunks, base.relevant)
    scores["exact_match"] = m.exact_match(answer.text, base.references)
    scores["f1"] = m.token_f1(answer.text, base.references)
    scores["contains"] = m.contains_reference(answer.text, base.references)
    short = answer.short_answer.text if answer.short_answer and not abstained else None
    # The short answer where one was given (None elsewhere), and what a reader sees first:
    # the short answer where there is one, else the answer.
    scores["short_exact_match"] = m.exact_match(short, base.references) if short else None
    scores["short_f1"] = m.token_f1(short, base.references) if short else None
    scores["first_shown_exact_match"] = m.exact_match(short or answer.text, base.references)
    scores["first_shown_f1"] = m.token_f1(short or answer.text, base.references)
    scores |= _evidence_scores(answer, base.references)
    # The headline: the service's own check of what the model generated (the share of its
    # sentences the evidence supports); undefined where it checked none (or an older server).
    scores["answer_groundedness"] = (answer.groundedness if answer.sentences and not abstained
                                     else None)
    # The evaluation's overlap measure of the text shown, which is verbatim source text when
    # the check turned the answer into a quote: near 1 by construction for those.
    scores["shown_text_overlap"] = (None if abstained else
                                    m.overlap_groundedness(answer.text, _cited_spans(answer)))
    t = answer.timings
    return replace(
        base, asked=True, answer=answer.text, short_answer=short, abstained=abstained,
        mode=answer.mode,
        generated_text=answer.generated_text, repeats_sentence=m.repeats_sentence(answer.text),
        retrieved=chunks, citations=cited, evidence=_quotes(answer, corpus),
        ranking_source="citations" if retrieved is None else f"retriever@{len(chunks)}",
        scores=scores, cached=answer.cached,
        timings={"retrieve_ms": t.retrieve_ms, "evidence_ms": t.evidence_ms,
                 "prompt_ms": t.prompt_ms, "first_token_ms": t.first_token_ms,
                 "first_sentence_ms": t.first_sentence_ms, "generate_ms": t.generate_ms,
                 "check_ms": t.check_ms, "total_ms": t.total_ms},
        prompt_tokens=answer.usage.prompt_tokens, completion_tokens=answer.usage.completion_tokens,
    )


def _evidence_scores(answer: Answer, references: Sequence[str]) -> dict[str, float | None]:
    """Whether the answer's quotes (all, or the first k) contain a reference answer."""
    quotes = [q.text for q in answer.evidence]
    scores = {"evidence_contains": m.evidence_contains(quotes, references)}
    for k in EVIDENCE_K:
        scores[f"evidence_hit@{k}"] = m.evidence_contains(quotes, references, k)
    return scores


def _quotes(answer: Answer, corpus: Corpus) -> tuple[ResultQuote, ...]:
    return tuple(ResultQuote(corpus.key(q.document_id, q.filename), q.filename, q.start, q.end,
                             q.page, q.score, q.source, q.supports, q.text[:SNIPPET_CHARS])
                 for q in answer.evidence)


def _cited_spans(answer: Answer) -> list[str]:
    """Texts of the sources the answer cites as [n]; all its sources when it cites none."""
    numbers = m.cited_numbers(answer.text)
    cited = [c.text for c in answer.citations if c.number in numbers]
    return cited or [c.text for c in answer.citations]


# --- aggregates ---------------------------------------------------------------------------

# First sentence: to the first checked text let out (what a streamed answer shows first).
LATENCY_STAGES = ("retrieve", "first_token", "first_sentence", "total")
QUALITY_SCORES = (*(f"{name}@{k}" for name in ("hit", "recall") for k in m.K_VALUES),
                  "mrr", "ndcg@10", "exact_match", "f1", "contains", "short_exact_match",
                  "short_f1", "first_shown_exact_match", "first_shown_f1", "evidence_contains",
                  *(f"evidence_hit@{k}" for k in EVIDENCE_K), "answer_groundedness",
                  "shown_text_overlap")


def aggregate(rows: Sequence[ItemResult]) -> dict[str, Any]:
    """Means of the per-item scores, abstention, answer modes, latency, throughput, cache, usage.

    Latency, prompt tokens and throughput count fresh answers only (cached ones have their own
    latency figure): when every answer came from the cache they are None, and `fresh_answers`
    says so. Prompt tokens count answers that had a prompt.
    """
    ok = [r for r in rows if r.error is None]
    fresh = [r for r in ok if not r.cached]
    asked = [r for r in ok if r.asked]
    abst = m.abstention([r.abstained for r in asked], [r.answerable for r in asked])
    quality = {name: m.mean(r.scores.get(name) for r in ok) for name in QUALITY_SCORES}
    # Of the answers the check passed as generated, the share that contain a reference.
    passed = [r for r in asked
              if r.mode == "generated" and not r.abstained and r.answerable and r.references]
    quality["check_precision"] = m.mean(r.scores.get("contains") for r in passed)
    # Of the answers given to answerable questions, the share with a short answer.
    given = [r for r in asked if not r.abstained and r.answerable]
    quality["short_answer_rate"] = m.rate([r.short_answer is not None for r in given])
    return {
        "items": len(rows),
        "errors": len(rows) - len(ok),
        "answerable": sum(r.answerable for r in rows),
        "unanswerable": sum(not r.answerable for r in rows),
        "quality": quality
        | {"abstention_precision": abst.precision, "abstention_recall": abst.recall},
        "abstention": asdict(abst)
        | {"false_abstentions": sum(r.abstained and r.answerable for r in asked)},
        "modes": {mode: m.rate([r.mode == mode for r in asked]) for mode in MODES},
        "repeated_sentence_answers": sum(r.repeats_sentence for r in asked),
        "fresh_answers": sum(r.asked for r in fresh),
        "latency_ms": {stage: _latency([r.timings[f"{stage}_ms"] for r in fresh
                                        if f"{stage}_ms" in r.timings])
                       for stage in LATENCY_STAGES},
        "cached_latency_ms": _latency([r.timings["total_ms"] for r in ok if r.cached]),
        "prompt_tokens": _latency([r.prompt_tokens for r in fresh if r.prompt_tokens > 0]),
        **_throughput([r for r in fresh if r.completion_tokens > 0]),
        "cache_hit_rate": m.rate([r.cached for r in asked]),
        "usage": {"prompt_tokens": sum(r.prompt_tokens for r in ok),
                  "completion_tokens": sum(r.completion_tokens for r in ok)},
    }


def _followups(rows: Sequence[ItemResult]) -> dict[str, Any]:
    """Multi-turn suites: per turn number, and on follow-up turns (turn > 1) retrieval with
    the conversation's history beside the same turns searched alone."""
    turns = [r for r in rows if r.error is None and r.conversation]
    if not turns:
        return {}
    later = [r for r in turns if r.turn > 1]
    followup: dict[str, Any] = {"turns": len(later),
                                "history": dict(Counter(r.history_source for r in later))}
    for name in FOLLOWUP_SCORES:
        followup[f"with_history_{name}"] = m.mean(r.scores.get(name) for r in later)
        followup[f"without_history_{name}"] = m.mean(r.scores.get(f"alone_{name}")
                                                     for r in later)
    by_turn = {str(n): {"items": sum(r.turn == n for r in turns),
                        "hit@3": m.mean(r.scores.get("hit@3") for r in turns if r.turn == n)}
               for n in sorted({r.turn for r in turns})}
    return {"followup": followup, "turns": by_turn}


def _throughput(generated: Sequence[ItemResult]) -> dict[str, float | None]:
    """Tokens per second of generation, and of decoding alone (after the first token)."""
    tokens = [r.completion_tokens for r in generated]
    return {
        "tokens_per_second": m.overall_tokens_per_second(
            tokens, [r.timings["generate_ms"] for r in generated]),
        "decode_tokens_per_second": m.overall_tokens_per_second(
            [t - 1 for t in tokens], [_decode_ms(r) for r in generated]),
    }


def _decode_ms(row: ItemResult) -> float:
    """Generation time after the first token (generate_ms also holds the prefill)."""
    t = row.timings
    prefill = t["first_token_ms"] - t["retrieve_ms"] - t["prompt_ms"]
    return t["generate_ms"] - prefill


def _latency(values: Sequence[float]) -> dict[str, float] | None:
    summary = m.latency(values)
    return asdict(summary) if summary else None
