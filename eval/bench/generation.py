"""`rag bench` generation: one stream of the engine (prefill and decode speed) beside plain
`model.generate` on a stock copy of the same model, prompt-lookup decoding, and llama.cpp on
the packaged GGUF as a peer where llama-cpp-python is installed.

(Many streams at once, prefixes and dtypes are `eval.bench.serving`.)
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np

from eval.bench.measure import BenchOptions, Report, timed
from rag.settings import PACKAGED_GENERATOR, Settings

if TYPE_CHECKING:
    from rag.generation.base import Generator
    from rag.service import RagService

Timed = tuple[dict[str, float], tuple[int, ...]]  # speeds, and the generated token ids


def bench_generation(
    service: RagService, question: str, options: BenchOptions, report: Report
) -> dict[str, Any]:
    """Prefill and decode speed of the engine's stream beside plain `model.generate` on a stock
    copy of the same model (loaded from the same files, none of the engine's changes)."""
    from rag.ask.prompt import build_prompt
    from rag.types import Query

    generator = service.generator
    results = service.asking.retrieve(Query(question, service.settings.top_k))
    prompt = build_prompt(question, results, generator.tokenizer, generator.context_window,
                          options.max_new_tokens)
    stock = _stock_model(generator)
    plain = partial(_raw_generation, stock, generator.tokenizer, prompt.input_ids,
                    options.max_new_tokens)
    engine: list[dict[str, float]] = []
    raw: list[dict[str, float]] = []
    lookup: list[dict[str, float]] = []
    texts: set[tuple[int, ...]] = set()
    for r in range(options.rounds):
        report("generation", r, options.rounds)
        # Alternate which goes first, so that neither always meets a warmer machine.
        for kind in (("engine", "raw") if r % 2 == 0 else ("raw", "engine")):
            if kind == "engine":
                figures, ids = _engine_generation(generator, prompt, options.max_new_tokens)
                engine.append(figures)
            else:
                figures, ids = _in_thread(plain)
                raw.append(figures)
            texts.add(ids)
        # prompt-lookup decoding: lossless under greedy decoding, so the same tokens again
        figures, ids = _in_thread(partial(plain, lookup=10))
        lookup.append(figures)
        texts.add(ids)
    return {"prompt_tokens": len(prompt.input_ids), "engine": _medians(engine),
            "raw_generate": _medians(raw), "prompt_lookup_generate": _medians(lookup),
            "same_greedy_tokens": len(texts) == 1,
            "llama_cpp": _llama_cpp_peer(service.settings, prompt.input_ids, options),
            "engine_rounds": engine, "raw_generate_rounds": raw}


def _llama_cpp_peer(settings: Settings, input_ids: Sequence[int], options: BenchOptions
                    ) -> dict[str, Any]:
    """The same prompt through llama.cpp on the packaged GGUF (Q4_1 weights, so its text may
    differ), where llama-cpp-python is installed: a peer's prefill and decode speed."""
    import importlib.util

    if importlib.util.find_spec("llama_cpp") is None:
        return {"skipped": "llama-cpp-python is not installed"}
    from llama_cpp import Llama

    from rag.generation.model_files import resolve_model

    gguf = resolve_model(settings.model_copy(update={"generator_model": PACKAGED_GENERATOR}))
    llm = Llama(model_path=str(gguf), n_ctx=2048, n_threads=os.cpu_count() or 1, verbose=False)
    rounds = []
    for _ in range(options.rounds):
        llm.reset()  # type: ignore[no-untyped-call,unused-ignore]
        start = time.perf_counter()
        first, tokens = None, 0
        for _ in llm.create_completion(list(input_ids), max_tokens=options.max_new_tokens,
                                       temperature=0.0, stream=True):
            first = first or time.perf_counter()
            tokens += 1
        end = time.perf_counter()
        rounds.append(_speeds(len(input_ids), tokens, (first or end) - start, end - start))
    return {"model": gguf.name, **_medians(rounds)}


def _stock_model(generator: Generator) -> Any:
    """A fresh, unmodified transformers model from the generator's files, dtype and device."""
    from rag.generation.model_files import load_causal_lm

    info = generator.engine.info  # type: ignore[attr-defined]
    return load_causal_lm(generator.model_dir, info["device"], info["dtype"])  # type: ignore[attr-defined]


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
    return _speeds(len(prompt.input_ids), stream.usage.completion_tokens, ttft, end - start), ids


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
    return _speeds(len(input_ids), len(new), prefill, total), encoded


def _speeds(prompt_tokens: int, new_tokens: int, first_s: float, total_s: float
            ) -> dict[str, float]:
    decode_s = max(total_s - first_s, 1e-9)
    return {"new_tokens": new_tokens, "first_token_ms": first_s * 1000,
            "total_ms": total_s * 1000, "prefill_tokens_per_s": prompt_tokens / first_s,
            "decode_tokens_per_s": max(new_tokens - 1, 0) / decode_s}


def _medians(rounds: Sequence[dict[str, float]]) -> dict[str, float]:
    return {key: float(np.median([r[key] for r in rounds])) for key in rounds[0]}
