"""`rag bench` generation: one stream of the engine (prefill and decode speed) beside plain
`model.generate` on a stock copy of the same model, like for like: both without prompt-lookup
decoding, and both with it (the engine's own drafting, `generator_prompt_lookup`, against
generate's `prompt_lookup_num_tokens`), so a gain from copying the sources is never counted as
the engine's speed; and llama.cpp on the packaged GGUF as a peer where llama-cpp-python is
installed (`eval.bench.llama_cpp`).

(Many streams at once, prefixes and dtypes are `eval.bench.serving`.)
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from eval.bench.llama_cpp import bench_llama_cpp
from eval.bench.measure import BenchOptions, Report, medians, speeds, timed

if TYPE_CHECKING:
    from rag.generation.base import Generator
    from rag.generation.local import LocalGenerator
    from rag.service import RagService

Timed = tuple[dict[str, float], tuple[int, ...]]  # speeds, and the generated token ids
# The four runs: the engine and plain generate, each without and with prompt-lookup decoding.
RUNS = ("engine", "engine_prompt_lookup", "generate", "generate_prompt_lookup")
LOOKUP_TOKENS = 10  # generate's prompt_lookup_num_tokens


def bench_generation(
    service: RagService, questions: Sequence[str], options: BenchOptions, report: Report
) -> dict[str, Any]:
    """Prefill and decode speed of the engine's stream (on the first question's prompt) beside
    plain `model.generate` on a stock copy of the same model (loaded from the same files, none
    of the engine's changes), each without and with prompt-lookup decoding (`RUNS`); the
    engine's drafts with each setting; llama.cpp on the same prompt, and on as many of the ask
    path's prompts at once as the most concurrent serving level (`eval.bench.llama_cpp`)."""
    from rag.ask.prompt import build_prompt
    from rag.generation.local import LocalGenerator
    from rag.types import Query

    generator = service.generator
    if not isinstance(generator, LocalGenerator):
        return {"skipped": "the generator is not local"}
    results = service.asking.retrieve(Query(questions[0], service.settings.top_k))
    prompt = build_prompt(questions[0], results, generator.tokenizer, generator.context_window,
                          options.max_new_tokens)
    plain = partial(_raw_generation, _stock_model(generator), generator.tokenizer,
                    prompt.input_ids, options.max_new_tokens)
    with _engines_by_lookup(service, generator) as engines:
        calls: dict[str, Callable[[], Timed]] = {
            "engine": partial(_engine_generation, engines[False], prompt, options.max_new_tokens),
            "engine_prompt_lookup": partial(_engine_generation, engines[True], prompt,
                                            options.max_new_tokens),
            "generate": partial(_in_thread, plain),
            # lossless under greedy decoding, so the same tokens again
            "generate_prompt_lookup": partial(_in_thread, partial(plain, lookup=LOOKUP_TOKENS))}
        before = {lookup: _drafts(engine) for lookup, engine in engines.items()}
        rounds: dict[str, list[dict[str, float]]] = {name: [] for name in RUNS}
        texts: set[tuple[int, ...]] = set()
        for r in range(options.rounds):
            report("generation", r, options.rounds)
            # Rotate which goes first, so that none always meets a warmer machine.
            for name in RUNS[r % len(RUNS):] + RUNS[:r % len(RUNS)]:
                figures, ids = calls[name]()
                rounds[name].append(figures)
                texts.add(ids)
        drafts = {name: _drafts(engines[lookup], before[lookup])
                  for name, lookup in (("engine", False), ("engine_prompt_lookup", True))}
    return {"prompt_tokens": len(prompt.input_ids),
            **{name: medians(figures) for name, figures in rounds.items()},
            "engine_drafts": drafts, "same_greedy_tokens": len(texts) == 1,
            "llama_cpp": bench_llama_cpp(service.settings, prompt.input_ids, _parallel_work(
                service, questions, max(options.concurrency)), options, report),
            "rounds": rounds}


@contextmanager
def _engines_by_lookup(service: RagService, generator: LocalGenerator
                       ) -> Iterator[dict[bool, LocalGenerator]]:
    """`generator` and a second engine like it but for `generator_prompt_lookup` (read when
    the engine loads), keyed by whether it drafts; the second is closed afterwards."""
    from rag.generation.local import LocalGenerator
    from rag.generation.runtime.engine import EngineOptions

    options = getattr(generator.engine, "options", None)
    drafts = (options.prompt_lookup if isinstance(options, EngineOptions)
              else service.settings.generator_prompt_lookup)
    other = LocalGenerator(service.settings.model_copy(update={
        "generator_prompt_lookup": not drafts,
        "generator_in_process": generator.engine.info["runs_in"] == "thread"}))
    other.load()
    try:
        yield {drafts: generator, not drafts: other}
    finally:
        other.close()


def _drafts(generator: LocalGenerator, since: dict[str, int] | None = None) -> dict[str, int]:
    """Prompt-lookup drafts the engine checked and found right (counted from `since`)."""
    stats = generator.stats()
    now = {"drafted": int(stats.get("drafted", 0)), "accepted": int(stats.get("accepted", 0))}
    return {k: v - (since or {}).get(k, 0) for k, v in now.items()}


def _parallel_work(service: RagService, questions: Sequence[str], n: int) -> list[list[int]]:
    """The prompts `eval.bench.serving` answers n at a time (the ask path's, in turn)."""
    from eval.bench.serving import ask_prompts

    prompts = ask_prompts(service, questions)
    return [list(prompts[j % len(prompts)].input_ids) for j in range(n)]


def _stock_model(generator: Generator) -> Any:
    """A fresh, unmodified transformers model from the generator's files, dtype and device."""
    from rag.generation.model_files import load_causal_lm

    engine = generator.engine  # type: ignore[attr-defined]
    options = getattr(engine, "options", None)  # where its int8 copy is kept
    models_dir = getattr(options, "models_dir", None)
    return load_causal_lm(generator.model_dir, engine.info["device"],  # type: ignore[attr-defined]
                          engine.info["dtype"], models_dir=Path(models_dir) if models_dir else None)


def _in_thread(call: Callable[[], Timed]) -> Timed:
    """Run `call` in a fresh thread, as the engine generates in its own (OpenMP teams are
    per thread, so where a call runs changes its speed)."""
    out: list[Timed] = []
    worker = threading.Thread(target=lambda: out.append(call()), name="bench-raw-generate")
    worker.start()
    worker.join()
    if not out:
        raise RuntimeError("plain model.generate failed; see the traceback above.")
    return out[0]


def _engine_generation(generator: Generator, prompt: Any, max_new_tokens: int) -> Timed:
    clear = getattr(generator, "clear_prefix_cache", None)
    if clear is not None:  # a cold prompt each round, as plain generate's is
        clear()
    start = time.perf_counter()
    stream = generator.stream(prompt, max_new_tokens)
    first, text = None, ""
    for piece in stream:
        first = first or time.perf_counter()
        text += piece
    end = time.perf_counter()
    ttft = (first or end) - start
    ids = tuple(generator.tokenizer.encode(text, add_special_tokens=False))
    return speeds(len(prompt.input_ids), stream.usage.completion_tokens, ttft, end - start), ids


def _raw_generation(
    model: Any, tokenizer: Any, input_ids: Sequence[int], max_new_tokens: int, lookup: int = 0
) -> Timed:
    """Plain greedy `model.generate` (with `lookup`: prompt-lookup decoding of that many
    tokens): one new token (prefill), then the whole answer."""
    import torch

    ids = torch.tensor([list(input_ids)], device=model.device)  # (1, prompt_tokens)
    config = model.generation_config
    kwargs = {"attention_mask": torch.ones_like(ids), "do_sample": False, "use_cache": True,
              "temperature": None, "top_p": None, "top_k": None,
              "pad_token_id": config.pad_token_id or config.eos_token_id}
    if lookup:
        kwargs["prompt_lookup_num_tokens"] = lookup
    with torch.inference_mode():
        prefill = timed(lambda: model.generate(ids, max_new_tokens=1, **kwargs)) / 1000
        start = time.perf_counter()
        out = model.generate(ids, max_new_tokens=max_new_tokens, **kwargs)
        total = time.perf_counter() - start
    new = out[0, len(input_ids):]
    # the same text as the engine's, compared as the tokens its decoded text encodes to
    text = tokenizer.decode(new, skip_special_tokens=True)
    encoded = tuple(tokenizer.encode(text, add_special_tokens=False))
    return speeds(len(input_ids), len(new), prefill, total), encoded
