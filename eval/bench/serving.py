"""`rag bench` asking and serving: end-to-end asks (fresh, then from the response cache), the
model in its own process vs in a thread of the API, many streams at once, cold vs warm prompt
prefixes, and float32 vs bfloat16 answers, on the ask path's own prompts (evidence-first), in
one run. (One stream beside plain `model.generate` is `eval.bench.generation`.)"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np

from eval.bench.measure import Report, percentiles, timed
from rag.ask.context import AskContext
from rag.ask.pipeline import AskPipeline
from rag.types import Prompt, Query

if TYPE_CHECKING:
    from rag.generation.base import Generator
    from rag.generation.local import LocalGenerator
    from rag.service import RagService


def bench_ask(service: RagService, questions: Sequence[str], report: Report) -> dict[str, Any]:
    """End-to-end asks: each question fresh, then again from the response cache."""
    from rag.ask.service import AskRequest

    fresh, first, cached = [], [], []
    for n, question in enumerate(questions):
        report("ask (uncached)", n, len(questions))
        answer = service.asking.ask(AskRequest(question))
        fresh.append(answer.timings.total_ms)
        first.append(answer.timings.first_token_ms)
    for n, question in enumerate(questions):
        report("ask (cached)", n, len(questions))
        cached.append(timed(partial(service.asking.ask, AskRequest(question))))
    return {"questions": len(questions), "uncached_ms": percentiles(fresh),
            "first_token_ms": percentiles(first), "cached_ms": percentiles(cached)}


def ask_prompts(service: RagService, questions: Sequence[str]) -> list[Prompt]:
    """The prompts the ask path builds for `questions` (those it does not abstain on)."""
    pipeline = service.asking.pipeline
    assert pipeline is not None
    prompts = []
    for question in questions:
        ctx = pipeline.run_until(AskContext(Query(question, service.settings.top_k)), "prompt")
        if ctx.prompt is not None and not ctx.done:
            prompts.append(ctx.prompt)
    return prompts


def timed_stream(generator: Generator, prompt: Prompt, max_new_tokens: int) -> dict[str, float]:
    """First-token and total milliseconds and tokens of one streamed answer."""
    start = time.perf_counter()
    first = None
    stream = generator.stream(prompt, max_new_tokens)
    for _ in stream:
        first = first or time.perf_counter()
    end = time.perf_counter()
    return {"first_token_ms": ((first or end) - start) * 1000, "total_ms": (end - start) * 1000,
            "tokens": stream.usage.completion_tokens,
            "prompt_tokens": stream.usage.prompt_tokens}


def bench_concurrency(generator: LocalGenerator, prompts: Sequence[Prompt],
                      levels: Sequence[int], max_new_tokens: int, report: Report
                      ) -> dict[str, Any]:
    """The same prompts (as many as the highest level) answered n at a time for each level n:
    aggregate tokens/s and first-token percentiles. Every level does the same work, so the
    ratios to level 1 (one stream) are speed-ups. The prefix cache is emptied before each
    level, so no level reuses another's KV."""
    work = [prompts[j % len(prompts)] for j in range(max(levels))]
    out: dict[str, Any] = {}
    for i, n in enumerate(levels):
        report("concurrency", i, len(levels))
        generator.clear_prefix_cache()
        out[str(n)] = _answer_all(generator, work, n, max_new_tokens)
    one = out[str(levels[0])]
    for figures in out.values():
        figures["aggregate_ratio_to_one"] = (figures["aggregate_tokens_per_s"]
                                             / one["aggregate_tokens_per_s"])
        figures["slowest_first_token_ratio_to_one"] = (figures["first_token_max_ms"]
                                                       / one["first_token_p50_ms"])
    return out


def _answer_all(generator: LocalGenerator, work: Sequence[Prompt], n: int,
                max_new_tokens: int) -> dict[str, Any]:
    """Answer every prompt of `work` with `n` client threads, each taking the next one."""
    results: list[dict[str, float]] = []
    taken = iter(range(len(work)))
    lock = threading.Lock()

    def client() -> None:
        while True:
            with lock:
                j = next(taken, None)
            if j is None:
                return
            timing = timed_stream(generator, work[j], max_new_tokens)
            with lock:
                results.append(timing)

    threads = [threading.Thread(target=client) for _ in range(n)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    firsts = [r["first_token_ms"] for r in results]
    tokens = sum(int(r["tokens"]) for r in results)
    return {"clients": n, "requests": len(results), "wall_s": wall, "tokens": tokens,
            "aggregate_tokens_per_s": tokens / wall,
            "first_token_p50_ms": float(np.median(firsts)),
            "first_token_p95_ms": float(np.percentile(firsts, 95)),
            "first_token_max_ms": max(firsts)}


def bench_prefix(generator: LocalGenerator, prompts: Sequence[Prompt], rounds: int,
                 report: Report) -> dict[str, Any]:
    """First token of a prompt with an empty prefix cache (cold), then of the same prompt
    again (warm: a repeated question) and of another question after it (shared front only)."""
    cold, warm, other = [], [], []
    for r in range(rounds):
        report("prefix cache", r, rounds)
        a, b = prompts[r % len(prompts)], prompts[(r + 1) % len(prompts)]
        generator.clear_prefix_cache()
        cold.append(timed_stream(generator, a, 1)["first_token_ms"])
        warm.append(timed_stream(generator, a, 1)["first_token_ms"])
        other.append(timed_stream(generator, b, 1)["first_token_ms"])
    figures = {"cold_first_token_ms": float(np.median(cold)),
               "warm_first_token_ms": float(np.median(warm)),
               "shared_front_first_token_ms": float(np.median(other))}
    figures["warm_ratio_to_cold"] = figures["warm_first_token_ms"] / figures["cold_first_token_ms"]
    return figures | {"stats": generator.stats()}


def bench_serving(service: RagService, questions: Sequence[str], levels: Sequence[int],
                  max_new_tokens: int, rounds: int, report: Report) -> dict[str, Any]:
    """Every serving figure on the ask path's prompts for `questions`."""
    from rag.generation.local import LocalGenerator

    generator = service.generator
    if not isinstance(generator, LocalGenerator):
        return {"skipped": "the generator is not local"}
    prompts = ask_prompts(service, questions)
    figures = {
        "prompts": len(prompts),
        "prompt_tokens_p50": float(np.median([len(p.input_ids) for p in prompts])),
        "concurrency": bench_concurrency(generator, prompts, levels, max_new_tokens, report),
        "prefix": bench_prefix(generator, prompts, rounds, report),
    }
    generator.clear_prefix_cache()
    return figures


def bench_engines(service: RagService, questions: Sequence[str], report: Report
                  ) -> dict[str, Any]:
    """Uncached asks over `questions` with the model in a process of its own (the default) and
    in a thread of this process (the earlier design, `generator_in_process`), alternating which
    goes first question by question: answer time percentiles, their ratio, same answers."""
    from rag.ask.generate import GenerateStage
    from rag.ask.service import AskRequest
    from rag.generation.local import LocalGenerator

    generator, pipeline = service.generator, service.asking.pipeline
    if not isinstance(generator, LocalGenerator) or pipeline is None:
        return {"skipped": "the generator is not local"}
    mine = generator.engine.info["runs_in"]
    other = LocalGenerator(service.settings.model_copy(update={
        "generator_in_process": mine == "process"}))
    other.load()
    swapped = AskPipeline([GenerateStage(other, service.settings.max_new_tokens,
                                         service.settings.stop_at_paragraph)
                           if stage.name == "generate" else stage for stage in pipeline.stages])
    runs: dict[str, list[Any]] = {mine: [], other.engine.info["runs_in"]: []}
    pipelines = {mine: pipeline, other.engine.info["runs_in"]: swapped}
    try:
        for n, question in enumerate(questions):
            report("ask: process vs thread engine", n, len(questions))
            for name in (list(runs) if n % 2 == 0 else list(runs)[::-1]):
                service.asking.pipeline = pipelines[name]
                service.cache.clear()
                runs[name].append(service.asking.ask(AskRequest(question)))
    finally:
        service.asking.pipeline = pipeline
        service.cache.clear()
        other.close()
    figures: dict[str, Any] = {name: {
        "uncached_p50_ms": float(np.median([a.timings.total_ms for a in answers])),
        "uncached_p95_ms": float(np.percentile([a.timings.total_ms for a in answers], 95)),
        "first_token_p50_ms": float(np.median([a.timings.first_token_ms for a in answers])),
    } for name, answers in runs.items()}
    figures["process_to_thread_ratio"] = (figures["process"]["uncached_p50_ms"]
                                          / figures["thread"]["uncached_p50_ms"])
    figures["same_answers"] = sum(a.text == b.text for a, b in zip(*runs.values(), strict=True))
    figures["questions"] = len(questions)
    return figures


def bench_bfloat16(service: RagService, questions: Sequence[str], max_new_tokens: int,
                   report: Report) -> dict[str, Any]:
    """float32 (the CPU default) beside bfloat16 on the same prompts: same greedy answers?"""
    from rag.generation.local import LocalGenerator

    generator = service.generator
    if not isinstance(generator, LocalGenerator):
        return {"skipped": "the generator is not local"}
    other = LocalGenerator(service.settings.model_copy(update={
        "generator_dtype": "bfloat16" if generator.engine.info["dtype"] == "float32"
        else "float32", "prefix_cache_tokens": 0}))
    other.load()
    try:
        prompts = ask_prompts(service, questions)
        return {"reference_dtype": generator.engine.info["dtype"], "other_dtype":
                other.engine.info["dtype"]} | bench_dtypes(generator, other, prompts,
                                                           max_new_tokens, report)
    finally:
        other.close()


def bench_dtypes(reference: Generator, other: Generator, prompts: Sequence[Prompt],
                 max_new_tokens: int, report: Report) -> dict[str, Any]:
    """How many greedy answers `other` (e.g. bfloat16) gives exactly as `reference` does, and
    both one-stream speeds."""
    same, ref_ms, other_ms = 0, [], []
    for i, prompt in enumerate(prompts):
        report("dtypes", i, len(prompts))
        a, b = _answer(reference, prompt, max_new_tokens), _answer(other, prompt, max_new_tokens)
        same += a[0] == b[0]
        ref_ms.append(a[1])
        other_ms.append(b[1])
    return {"prompts": len(prompts), "same_greedy_answers": same,
            "reference_total_p50_ms": float(np.median(ref_ms)),
            "other_total_p50_ms": float(np.median(other_ms)),
            "speed_ratio": float(np.median(ref_ms)) / float(np.median(other_ms))}


def _answer(generator: Generator, prompt: Prompt, max_new_tokens: int) -> tuple[str, float]:
    start = time.perf_counter()
    text = "".join(generator.stream(prompt, max_new_tokens))
    return text, (time.perf_counter() - start) * 1000
