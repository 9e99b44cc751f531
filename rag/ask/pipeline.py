"""The ask path as a short pipeline of typed stages, built in one place.

Each stage (one module each: rewrite, retrieve, evidence, prompt, generate, check) takes the
`AskContext` so far and returns a new one; the pipeline runs them in order, times each under
its `name`, and stops early once a stage settles the answer (abstains). The text the stages
let out streams on as it comes (generation lets out checked sentences only); at the end the
pipeline sends what of the answer is not out yet (a quote, an abstention), so the pieces,
joined, are the answer's text.

Adding a stage (a reranker, a query rewrite) is one module with a class that has `name` and
`run`, and one line in `build_pipeline`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import replace

from rag.ask.check import CheckStage
from rag.ask.context import AskContext, Pieces, Stage
from rag.ask.evidence import EvidenceSelector, EvidenceStage
from rag.ask.generate import GenerateStage
from rag.ask.prompt import PromptStage
from rag.ask.retrieve import Retriever, RetrieveStage
from rag.ask.rewrite import FollowupStage
from rag.ask.short import ShortAnswerStage
from rag.embedding import Embedder
from rag.generation.base import Generator
from rag.settings import Settings
from rag.stores.chunks import ChunkStore

log = logging.getLogger(__name__)


class AskPipeline:
    """Runs stages in order, timing each, until one settles the answer."""

    def __init__(self, stages: Sequence[Stage]) -> None:
        names = [stage.name for stage in stages]
        if len(set(names)) != len(names):
            raise ValueError(f"stage names must be unique: {names}")
        self.stages = tuple(stages)

    def run(self, ctx: AskContext) -> Pieces:
        sent: list[str] = []
        first: float | None = None
        for stage in self.stages:
            if ctx.done:
                break
            started = time.perf_counter()
            pieces = stage.run(ctx)
            while True:
                try:
                    piece = next(pieces)
                except StopIteration as end:
                    ctx = end.value
                    break
                if piece:
                    first = first or time.perf_counter()
                    sent.append(piece)
                    yield piece
            elapsed = (time.perf_counter() - started) * 1000.0
            ctx = replace(ctx, timings={**ctx.timings, stage.name: elapsed})
        out = "".join(sent)
        if not ctx.text.startswith(out):
            log.error("the streamed text is not the start of the answer: %r, then %r",
                      out, ctx.text)
        elif ctx.text[len(out) :]:
            first = first or time.perf_counter()
            yield ctx.text[len(out) :]
        return replace(ctx, first_release=first)

    def run_until(self, ctx: AskContext, last: str) -> AskContext:
        """Run the stages up to and including the one named `last`, a stage before generation
        (those stream nothing): what retrieval or the prompt alone would be."""
        names = [stage.name for stage in self.stages]
        run = AskPipeline(self.stages[: names.index(last) + 1]).run(ctx)
        try:
            while True:
                next(run)
        except StopIteration as end:
            result: AskContext = end.value
            return result


def build_pipeline(
    settings: Settings, retriever: Retriever, store: ChunkStore, embedder: Embedder,
    generator: Generator,
) -> AskPipeline:
    """The ask path, stage by stage."""
    s = settings
    selector = EvidenceSelector(store, embedder, s.evidence_sentences, s.rrf_k)
    check = CheckStage(s.min_support_overlap, s.unsupported_answer, s.evidence_sentences,
                       s.min_quote_score, s.check_answers_question)
    return AskPipeline([
        *([FollowupStage()] if s.followup_rewrite == "terms" else []),
        RetrieveStage(retriever),
        EvidenceStage(selector, s.min_relevance, s.min_evidence),
        PromptStage(generator, s.answer_context, s.max_new_tokens),
        GenerateStage(generator, s.max_new_tokens, s.stop_at_paragraph, check),
        check,
        *([ShortAnswerStage(check)] if s.short_answers else []),
    ])
