"""A scripted target for fast tests of the runner, report, compare and CLI logic."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from eval.metrics import NO_ANSWER
from eval.suites import CorpusDocument, Suite, SuiteItem
from eval.targets import Advance, Retrieved
from rag.types import (
    Answer,
    AnswerMode,
    Citation,
    Quote,
    SentenceCheck,
    ShortAnswer,
    Timings,
    Turn,
    Usage,
)


@dataclass(frozen=True)
class Script:
    """What the fake answers to one question."""

    text: str
    cited: Sequence[tuple[str, str]] = ()  # (document key, chunk text)
    retrieved: Sequence[str] | None = None  # document keys, best first; None: unknown
    total_ms: float = 100.0
    cached: bool = False
    fail: bool = False
    mode: AnswerMode = "generated"
    evidence: Sequence[tuple[str, str]] = ()  # (document key, quote text), best first
    checked: Sequence[bool] = ()  # the service's check of each answer sentence: supported?
    generated_text: str = ""
    prompt_tokens: int = 50
    with_history: Sequence[str] | None = None  # retrieved when asked after earlier turns
    short: str | None = None  # the short answer


@dataclass
class FakeTarget:
    """Answers from a script; document ids are "id-" + the first key with the same text."""

    scripts: Mapping[str, Script]
    name: str = "fake"
    same_bytes: Mapping[str, str] = field(default_factory=dict)  # key -> key it duplicates
    # every call as (kind, question, the history it came with), in the order they came
    calls: list[tuple[str, str, tuple[Turn, ...]]] = field(default_factory=list)

    def ingest(self, docs: Sequence[CorpusDocument], advance: Advance) -> dict[str, str]:
        advance(len(docs))
        return {d.key: "id-" + self.same_bytes.get(d.key, d.key) for d in docs}

    def ask(self, question: str, top_k: int | None, history: Sequence[Turn] = ()) -> Answer:
        self.calls.append(("ask", question, tuple(history)))
        script = self.scripts[question]
        if script.fail:
            raise RuntimeError("the service went away")
        citations = tuple(Citation(n, "id-" + key, key, n, text, 0, len(text), None, 1.0 / n)
                          for n, (key, text) in enumerate(script.cited, start=1))
        timings = Timings(retrieve_ms=10.0, prompt_ms=5.0, first_token_ms=40.0,
                          generate_ms=script.total_ms - 15.0, total_ms=script.total_ms)
        tokens = 0 if script.cached or script.text == NO_ANSWER else 10
        return Answer(question, script.text, citations, mode=script.mode,
                      groundedness=sum(script.checked) / len(script.checked)
                      if script.checked else 0.0,
                      evidence=_quotes(script.evidence),
                      sentences=tuple(SentenceCheck(f"sentence {n}", ok, 1.0 if ok else 0.0)
                                      for n, ok in enumerate(script.checked, start=1)),
                      generated_text=script.generated_text or script.text, cached=script.cached,
                      usage=Usage(script.prompt_tokens, tokens), timings=timings,
                      model="fake-model", index_version=3,
                      short_answer=ShortAnswer(script.short) if script.short else None)

    def retrieve(self, question: str, depth: int, history: Sequence[Turn] = ()
                 ) -> list[Retrieved] | None:
        self.calls.append(("retrieve", question, tuple(history)))
        script = self.scripts[question]
        keys = script.with_history if history and script.with_history else script.retrieved
        if keys is None:
            return None
        return [Retrieved("id-" + k, k, n, f"text of {k}", 1.0 / (n + 1))
                for n, k in enumerate(keys[:depth])]

    def describe(self) -> dict[str, Any]:
        return {"settings": {"top_k": 5, "data_dir": "/tmp/x"}, "models": {"generator": "fake"},
                "index_version": 3, "chunks": 4}


def _quotes(evidence: Sequence[tuple[str, str]]) -> tuple[Quote, ...]:
    """Quotes as the service gives them: source n is the n-th quote's chunk, scores falling."""
    return tuple(Quote(text, "id-" + key, key, 0, len(text), None, (), 1.0 / n, n)
                 for n, (key, text) in enumerate(evidence, start=1))


def suite(*items: SuiteItem, docs: Sequence[str] = ("a.md", "b.md")) -> Suite:
    corpus = tuple(CorpusDocument(k, k.rsplit("/", 1)[-1], text=f"text of {k}") for k in docs)
    return Suite("fake", "jsonl", "memory", tuple(items), corpus)
