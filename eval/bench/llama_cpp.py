"""`rag bench`'s peer on a CPU: llama.cpp (llama-cpp-python) on the generator's own GGUF, where
the bindings are installed (`pip install '.[llamacpp]'`, built from source). One stream without
and with prompt-lookup decoding (its `LlamaPromptLookupDecoding`, as the engine drafts from the
prompt), and eight sequences decoded together in one context (one `llama_decode` a step over
every running sequence), so that our figures stand beside its in the same run. Its weights
are the GGUF's own quantized ones, so its text may differ from ours."""

from __future__ import annotations

import importlib.util
import os
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from eval.bench.measure import BenchOptions, Report, medians, speeds
from rag.settings import Settings

LOOKUP_TOKENS = 10  # drafted tokens a step, as generate's prompt_lookup_num_tokens


def bench_llama_cpp(settings: Settings, single: Sequence[int], prompts: Sequence[Sequence[int]],
                    options: BenchOptions, report: Report) -> dict[str, Any]:
    """llama.cpp on the generator's GGUF: `single` as one stream without and with prompt
    lookup, then `prompts` all at once (and the first alone); or why it was skipped."""
    if importlib.util.find_spec("llama_cpp") is None:
        return {"skipped": "llama-cpp-python is not installed (pip install '.[llamacpp]')"}
    from llama_cpp import Llama
    from llama_cpp.llama_speculative import LlamaPromptLookupDecoding

    from rag.generation.model_files import resolve_model

    gguf = resolve_model(settings)  # the service's own model, as its GGUF
    if gguf.suffix.lower() != ".gguf":
        return {"skipped": f"the generator is not a GGUF file ({gguf.name})"}
    threads = os.cpu_count() or 1
    n_ctx = len(single) + options.max_new_tokens + LOOKUP_TOKENS + 16
    plain = Llama(model_path=str(gguf), n_ctx=n_ctx, n_threads=threads, verbose=False)
    # drafting checks the logits of every drafted position: it keeps them all (logits_all)
    lookup = Llama(model_path=str(gguf), n_ctx=n_ctx, n_threads=threads, verbose=False,
                   logits_all=True,
                   draft_model=LlamaPromptLookupDecoding(num_pred_tokens=LOOKUP_TOKENS))
    try:
        runs: dict[str, list[dict[str, float]]] = {"single": [], "single_prompt_lookup": []}
        for r in range(options.rounds):
            report("llama.cpp", r, options.rounds)
            runs["single"].append(_one_stream(plain, single, options.max_new_tokens))
            runs["single_prompt_lookup"].append(
                _one_stream(lookup, single, options.max_new_tokens))
        together = _parallel(plain, prompts, options.max_new_tokens, threads)
        lone = _parallel(plain, prompts[:1], options.max_new_tokens, threads)
        together["aggregate_ratio_to_one"] = (together["aggregate_tokens_per_s"]
                                              / lone["aggregate_tokens_per_s"])
        together["slowest_first_token_ratio_to_one"] = (together["first_token_max_ms"]
                                                        / lone["first_token_max_ms"])
        return {"model": gguf.name, "threads": threads,
                **{name: medians(rounds) for name, rounds in runs.items()},
                "parallel": together, "parallel_one": lone}
    finally:
        plain.close()
        lookup.close()


def _one_stream(llm: Any, ids: Sequence[int], max_new_tokens: int) -> dict[str, float]:
    llm.reset()
    start = time.perf_counter()
    first, tokens = None, 0
    for _ in llm.create_completion(list(ids), max_tokens=max_new_tokens, temperature=0.0,
                                   stream=True):
        first = first or time.perf_counter()
        tokens += 1
    end = time.perf_counter()
    return speeds(len(ids), tokens, (first or end) - start, end - start)


def _parallel(llm: Any, prompts: Sequence[Sequence[int]], max_new_tokens: int, threads: int
              ) -> dict[str, Any]:
    """Greedy answers to `prompts` in one llama.cpp context of that many sequences: each
    prompt prefilled in turn, then one batch a step over every sequence still running."""
    import llama_cpp as lc

    params = lc.llama_context_default_params()
    params.n_ctx = sum(len(p) + max_new_tokens for p in prompts) + 256
    params.n_batch = params.n_ubatch = 512
    params.n_seq_max = len(prompts)
    params.n_threads = params.n_threads_batch = threads
    params.kv_unified = True
    ctx = lc.llama_init_from_model(llm.model, params)
    batch = lc.llama_batch_init(512, 0, len(prompts))
    vocab, eos = llm.n_vocab(), llm.token_eos()

    def decode(items: Sequence[tuple[int, int, int, bool]]) -> None:
        """items: (token, position, sequence, wants logits)."""
        batch.n_tokens = len(items)
        for i, (token, pos, seq, logits) in enumerate(items):
            batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, pos, 1
            batch.seq_id[i][0], batch.logits[i] = seq, logits
        if lc.llama_decode(ctx, batch) != 0:
            raise RuntimeError("llama_decode failed")

    def argmax(i: int) -> int:
        return int(np.argmax(np.ctypeslib.as_array(lc.llama_get_logits_ith(ctx, i),
                                                   shape=(vocab,))))

    try:
        start = time.perf_counter()
        firsts, nexts, lengths, counts = [], {}, {}, {}
        for seq, prompt in enumerate(prompts):
            for at in range(0, len(prompt), 512):
                piece = prompt[at:at + 512]
                decode([(t, at + i, seq, at + i == len(prompt) - 1) for i, t in enumerate(piece)])
            nexts[seq], lengths[seq], counts[seq] = argmax(len(piece) - 1), len(prompt), 1
            firsts.append((time.perf_counter() - start) * 1000)
        running = [s for s in nexts if nexts[s] != eos and max_new_tokens > 1]
        while running:
            decode([(nexts[s], lengths[s] + counts[s] - 1, s, True) for s in running])
            for i, s in enumerate(running):
                nexts[s] = argmax(i)
                counts[s] += 1
            running = [s for s in running if nexts[s] != eos and counts[s] < max_new_tokens]
        wall = time.perf_counter() - start
    finally:
        lc.llama_batch_free(batch)
        lc.llama_free(ctx)
    tokens = sum(counts.values())
    return {"sequences": len(prompts), "tokens": tokens, "wall_s": wall,
            "aggregate_tokens_per_s": tokens / wall, "first_token_max_ms": max(firsts),
            "first_token_p50_ms": float(np.median(firsts))}
