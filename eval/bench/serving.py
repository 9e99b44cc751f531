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
from rag.ask.pipeline import build_pipeline
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
    from rag.generation.local import LocalGenerator

    generator = service.generator
    if not isinstance(generator, LocalGenerator) or service.asking.pipeline is None:
        return {"skipped": "the generator is not local"}
    mine = generator.engine.info["runs_in"]
    other = LocalGenerator(service.settings.model_copy(update={
        "generator_in_process": mine == "process"}))
    figures = alternate_asks(service, other, questions, "ask: process vs thread engine", report)
    figures["process_to_thread_ratio"] = (figures["process"]["uncached_p50_ms"]
                                          / figures["thread"]["uncached_p50_ms"])
    return figures


def bench_models(service: RagService, model: str, questions: Sequence[str], report: Report
                 ) -> dict[str, Any]:
    """Uncached asks over `questions` with the service's model and with `model` (the other
    packaged one), each with its own default settings otherwise, alternating which goes first:
    answer time percentiles and the ratio of their medians (ours / `model`'s)."""
    from rag.generation.local import LocalGenerator

    generator = service.generator
    if not isinstance(generator, LocalGenerator) or service.asking.pipeline is None:
        return {"skipped": "the generator is not local"}
    if model == service.settings.generator_model:
        return {"skipped": f"{model} is the service's own model"}
    other = LocalGenerator(service.settings.model_copy(update={"generator_model": model}))
    figures = alternate_asks(service, other, questions, f"ask: vs {model}", report,
                             names=(service.settings.generator_model, model))
    ours, theirs = (figures[n] for n in (service.settings.generator_model, model))
    figures["uncached_p50_ratio"] = ours["uncached_p50_ms"] / theirs["uncached_p50_ms"]
    if ours["both_answered_p50_ms"] and theirs["both_answered_p50_ms"]:
        figures["both_answered_p50_ratio"] = (ours["both_answered_p50_ms"]
                                              / theirs["both_answered_p50_ms"])
    figures["first_token_p50_ratio"] = ours["first_token_p50_ms"] / theirs["first_token_p50_ms"]
    return figures


def alternate_asks(service: RagService, other: LocalGenerator, questions: Sequence[str],
                   stage: str, report: Report, names: tuple[str, str] | None = None
                   ) -> dict[str, Any]:
    """Uncached asks over `questions` through the service's pipeline and through the same ask
    path built for `other` (loaded here, closed after: its own tokenizer, prompt and check),
    alternating which goes first question by question. Figures are keyed by `names` (default:
    where each engine runs)."""
    from rag.ask.service import AskRequest

    pipeline = service.asking.pipeline
    assert pipeline is not None
    other.load()
    infos = (service.generator.engine.info, other.engine.info)  # type: ignore[attr-defined]
    mine_name, other_name = names or (infos[0]["runs_in"], infos[1]["runs_in"])
    asking = service.asking
    assert asking.retriever is not None
    # the whole ask path again over the same index, with `other`'s tokenizer and prompt
    swapped = build_pipeline(service.settings, asking.retriever, asking.store,
                             service.embedder, other)
    runs: dict[str, list[Any]] = {mine_name: [], other_name: []}
    pipelines = {mine_name: pipeline, other_name: swapped}
    try:
        for n, question in enumerate(questions):
            report(stage, n, len(questions))
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
        "abstained": sum(a.mode == "abstained" for a in answers),
        "dtype": info["dtype"],
    } for (name, answers), info in zip(runs.items(), infos, strict=True)}
    pairs = list(zip(*runs.values(), strict=True))
    figures["same_answers"] = sum(a.text == b.text for a, b in pairs)
    figures["questions"] = len(questions)
    # refusals apart: the questions that both answered (neither abstained)
    both = [(a, b) for a, b in pairs if "abstained" not in (a.mode, b.mode)]
    figures["both_answered"] = len(both)
    for i, name in enumerate(runs):
        figures[name]["both_answered_p50_ms"] = float(np.median(
            [p[i].timings.total_ms for p in both])) if both else None
    return figures


def bench_bfloat16(service: RagService, questions: Sequence[str], max_new_tokens: int,
                   report: Report) -> dict[str, Any]:
    """The service's weight format beside float32 on the same prompts (bfloat16 where the
    service runs float32): same greedy answers, and one-stream speed."""
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
