"""Answer assembly: the finished `AskContext` as the `Answer` the caller gets."""

from __future__ import annotations

import time

from rag.ask.context import AskContext
from rag.types import Answer, Citation, ScoredChunk, Timings, Usage


def assemble_answer(ctx: AskContext, started: float, model: str, index_version: int) -> Answer:
    """The answer, its citations (the prompt's sources, numbered), usage and timings.

    `started` is the `time.perf_counter()` at which the ask began.
    """
    now = time.perf_counter()
    prompt = ctx.prompt
    sources = prompt.sources if prompt else ()
    return Answer(
        question=ctx.question,
        text=ctx.text,
        citations=tuple(citation(n, s) for n, s in enumerate(sources, start=1)),
        mode=ctx.mode,
        groundedness=ctx.groundedness,
        evidence=ctx.quotes,
        sentences=ctx.sentences,
        generated_text=ctx.generated,
        usage=Usage(prompt.prompt_tokens if prompt else 0, ctx.completion_tokens),
        timings=timings(ctx, started, now),
        used_chunk_ids=tuple(s.chunk.id for s in sources),
        dropped_chunk_ids=tuple(s.chunk.id for s in prompt.dropped) if prompt else (),
        model=model,
        index_version=index_version,
        history_turns=len(prompt.turns) if prompt else 0,
        search=ctx.search,
        short_answer=ctx.short_answer,
    )


def timings(ctx: AskContext, started: float, now: float) -> Timings:
    """Milliseconds per stage, to the first token, to the first checked text let out and in
    total."""
    ms = 1000.0
    stages = {name: round(value, 3) for name, value in ctx.timings.items()}
    first = ctx.first_token or now
    return Timings(
        retrieve_ms=stages.get("retrieve", 0.0),
        evidence_ms=stages.get("evidence", 0.0),
        prompt_ms=stages.get("prompt", 0.0),
        first_token_ms=(first - started) * ms,
        first_sentence_ms=((ctx.first_release or now) - started) * ms,
        generate_ms=stages.get("generate", 0.0),
        check_ms=stages.get("check", 0.0),
        total_ms=(now - started) * ms,
        stages=stages,
    )


def citation(number: int, source: ScoredChunk) -> Citation:
    """A prompt source as the numbered citation the answer shows."""
    c = source.chunk
    return Citation(number=number, document_id=c.document_id, filename=source.filename,
                    chunk_id=c.id, text=c.text, start=c.start, end=c.end, page=c.page,
                    score=round(source.score, 6))
