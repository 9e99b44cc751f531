"""`rag bench`: speed figures, each beside the raw library doing the same work in the same run.

These machines are shared and noisy, so the figures that count are ratios taken in one run
(engine / raw library); every figure is a median (p50) or a percentile over repeats.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from eval.bench_serving import bench_bfloat16, bench_engines, bench_serving
from eval.metrics import latency
from eval.suites import load_suite
from eval.targets import git_commit, public_settings
from rag.settings import PACKAGED_GENERATOR, Settings

if TYPE_CHECKING:
    from rag.embedding import Embedder
    from rag.generation.base import Generator
    from rag.service import RagService

SAMPLES = Path(__file__).parents[1] / "rag" / "samples"
SAMPLE_SUITE = Path(__file__).parent / "suites" / "sample"
READY = "rag-bench-ready"

Report = Callable[[str, int, int], None]


@dataclass(frozen=True)
class BenchOptions:
    sizes: tuple[int, ...] = (10_000, 100_000)
    asks: int = 10
    repeats: int = 50
    max_new_tokens: int = 64
    starts: bool = True
    rounds: int = 3
    corpus: Path = SAMPLES
    concurrency: tuple[int, ...] = (1, 2, 4, 8)
    dtypes: bool = True
    database_url: str | None = None  # a PostgreSQL server to compare stores on (scratch dbs)
    store_rows: int = 100_000


def run_bench(
    settings: Settings,
    options: BenchOptions,
    report: Report = lambda *_: None,
    embedder: Embedder | None = None,
    generator: Generator | None = None,
) -> dict[str, Any]:
    """Every measurement, over temp data dirs; models may be passed in already loaded."""
    from rag.service import RagService

    started, load_before = datetime.now(UTC), os.getloadavg()
    questions = [i.question for i in load_suite(SAMPLE_SUITE).items if i.answerable]
    with tempfile.TemporaryDirectory(prefix="rag-bench-") as tmp:
        base = settings.model_copy(update={
            "data_dir": Path(tmp) / "data", "converted_models_dir": settings.models_dir,
            "max_new_tokens": options.max_new_tokens})
        service = RagService(base, embedder=embedder, generator=generator)
        service.load()
        results = {
            "ingest": bench_ingest(service, options, Path(tmp), report),
            "retrieval": {str(n): bench_retrieval(service, n, questions, options, Path(tmp),
                                                  report) for n in options.sizes},
            "ask": bench_ask(service, questions[: options.asks], report),
            "engines": bench_engines(service, questions[: options.asks], report),
            "generation": bench_generation(service, questions[0], options, report),
            "serving": bench_serving(service, questions, options.concurrency,
                                     options.max_new_tokens, options.rounds, report),
            "bfloat16": bench_bfloat16(service, questions, options.max_new_tokens, report)
            if options.dtypes else None,
            "startup": bench_startup(settings, Path(tmp), report) if options.starts else None,
            "store": _bench_stores(base, options, questions, service, report)
            if options.database_url else None,
        }
        service.store.close()
    return {
        "schema": 1,
        "started_at": started.isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        "machine": machine() | {"load_average_before": load_before,
                                "load_average_after": os.getloadavg()},
        "settings": public_settings(base),
        "options": asdict(options) | {"corpus": str(options.corpus)},
        "figures": headline(results),
        **results,
        "memory": {"bench_peak_rss_mb": peak_rss_mb()},
    }


def _bench_stores(settings: Settings, options: BenchOptions, questions: Sequence[str],
                  service: RagService, report: Report) -> dict[str, Any]:
    from eval.bench_store import bench_queues, bench_store
    from rag.stores.postgres import scratch_database

    assert options.database_url is not None
    result = bench_store(settings, options.database_url, options.corpus,
                         questions[: options.asks], service.embedder, service.generator,
                         options.store_rows, report=report)
    with scratch_database(options.database_url, "rag_bench") as url:
        queues = {"postgres": url} | ({"redis": settings.redis_url} if settings.redis_url else {})
        result["queues"] = bench_queues(queues)
    return result


def machine() -> dict[str, Any]:
    import torch

    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def peak_rss_mb(pid: int | str = "self") -> float:
    """Peak resident memory of a process (VmHWM; `ru_maxrss` would count, after fork and exec,
    the parent's memory at the fork)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def engine_peak_rss_mb(generator: Generator) -> float:
    """Peak resident memory of the generator's engine process (0 when it runs in this one)."""
    pid = getattr(getattr(generator, "engine", None), "pid", None)
    return 0.0 if pid is None else peak_rss_mb(pid)


def percentiles(values_ms: Sequence[float]) -> dict[str, float] | None:
    """p50, p95, p99, max and count of milliseconds."""
    summary = latency(values_ms)
    if summary is None:
        return None
    return {"p50": summary.p50, "p95": summary.p95,
            "p99": float(np.percentile(values_ms, 99)), "max": summary.max,
            "count": summary.count}


def _timed(call: Callable[[], object]) -> float:
    """Milliseconds one call takes."""
    start = time.perf_counter()
    call()
    return (time.perf_counter() - start) * 1000


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


# --- ingestion ----------------------------------------------------------------------------


def bench_ingest(
    service: RagService, options: BenchOptions, tmp: Path, report: Report
) -> dict[str, Any]:
    """Whole-pipeline ingest (parse, chunk, embed, store, index) beside raw encode of the chunks.

    Round 1 ingests into `service` (later benchmarks ask over it); each other round into a
    fresh data dir, since the same bytes twice are one document.
    """
    from rag.service import RagService

    files = sorted(p for p in options.corpus.rglob("*") if p.is_file())
    rounds = []
    for r in range(options.rounds):
        report("ingest", r, options.rounds)
        target = service
        if r:
            fresh = service.settings.model_copy(update={"data_dir": tmp / f"ingest-{r}"})
            target = RagService(fresh, embedder=service.embedder, generator=service.generator)
            target.load(generator=False)
        ms = sum(_timed(partial(target.ingest_file, p)) for p in files)
        rounds.append(ms)
        if target is not service:
            target.store.close()
    texts = _chunk_texts(service)
    raw = [_raw_encode_ms(service, texts) for _ in range(options.rounds)]
    tokens = sum(len(service.embedder.tokenizer.encode(t)) for t in texts)
    seconds, raw_seconds = float(np.median(rounds)) / 1000, float(np.median(raw)) / 1000
    return {
        "files": len(files), "chunks": len(texts), "tokens": tokens,
        "rounds_ms": rounds, "raw_encode_rounds_ms": raw,
        "chunks_per_s": len(texts) / seconds, "tokens_per_s": tokens / seconds,
        "raw_encode_chunks_per_s": len(texts) / raw_seconds,
        "raw_encode_tokens_per_s": tokens / raw_seconds,
    }


def _chunk_texts(service: RagService) -> list[str]:
    ids, texts = service.store.searchable_texts()
    return texts


def _raw_encode_ms(service: RagService, texts: list[str]) -> float:
    """`SentenceTransformer.encode` of the same texts with the same batch size."""
    model = service.embedder.model  # type: ignore[attr-defined]
    return _timed(lambda: model.encode(texts, batch_size=service.settings.embedding_batch_size,
                                       normalize_embeddings=True, convert_to_numpy=True,
                                       show_progress_bar=False))


# --- retrieval ----------------------------------------------------------------------------


def bench_retrieval(
    service: RagService, size: int, questions: Sequence[str], options: BenchOptions, tmp: Path,
    report: Report,
) -> dict[str, Any]:
    """Retriever latency over `size` generated chunks (query embedding included), dense-only and
    hybrid, beside raw faiss (exact inner product) on the same vectors."""
    from rag.ask.retrieve import Query, Retriever

    report(f"retrieval {size}: generating", 0, 1)
    store, index, vectors = _generated_index(service, size, tmp / f"retrieval-{size}")
    queries = [questions[i % len(questions)] for i in range(options.repeats)]
    s = service.settings
    out: dict[str, Any] = {"chunks": size, "index_kind": index.kind, "top_k": s.top_k}
    for mode, hybrid in (("dense", False), ("hybrid", True)):
        retriever = Retriever(store, index, service.embedder, hybrid, s.rrf_k, s.candidates)
        # The first query builds the BM25 index of a hybrid retriever.
        out[f"{mode}_first_query_ms"] = _timed(partial(retriever.retrieve,
                                                       Query(queries[0], s.top_k)))
        times = []
        for n, q in enumerate(queries):
            report(f"retrieval {size}: {mode}", n, len(queries))
            times.append(_timed(partial(retriever.retrieve, Query(q, s.top_k))))
        out[f"{mode}_ms"] = percentiles(times)
    out |= _raw_faiss(service, vectors, queries, s.top_k)
    store.close()
    return out


def _generated_index(service: RagService, size: int, folder: Path) -> tuple[Any, Any, Any]:
    """A store and index of `size` chunks: random unit vectors, texts of corpus words."""
    from rag.documents.chunking import ChunkDraft
    from rag.index.vectors import FaissIndex
    from rag.stores.chunks import ChunkStore
    from rag.types import Document

    s, dim = service.settings, service.embedder.dimension
    rng = np.random.default_rng(0)
    store = ChunkStore(folder / "chunks.sqlite3")
    store.open()
    store.put_document(Document("generated", "generated.txt", "text/plain", 0, state="processing"))
    vectors = rng.standard_normal((size, dim), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    words = np.array(_vocabulary(service))
    for start in range(0, size, 5000):
        count = min(5000, size - start)
        drafts = [ChunkDraft(start + i, text, 0, len(text), None, (), 80)
                  for i, text in enumerate(_texts(rng, words, count))]
        store.add_chunks("generated", drafts, vectors[start : start + count])
    store.mark_indexed("generated", None)
    index = FaissIndex(folder / "index", s.embedding_model, dim,
                       s.approximate_index_threshold, s.ivf_nprobe, s.index_device)
    index.rebuild(store.searchable_vectors())
    index.save()
    return store, index, vectors


def _vocabulary(service: RagService) -> list[str]:
    """Words of the ingested corpus, so that BM25 finds matches for real questions."""
    words = {w.strip(".,:;()[]`\"'").lower() for t in _chunk_texts(service) for w in t.split()}
    return sorted(w for w in words if w.isalpha())


def _texts(rng: np.random.Generator, words: Any, count: int) -> Iterator[str]:
    lengths = rng.integers(40, 120, size=count)
    for length in lengths:
        yield " ".join(rng.choice(words, size=int(length)))


def _raw_faiss(
    service: RagService, vectors: Any, queries: Sequence[str], k: int
) -> dict[str, Any]:
    """faiss.IndexFlatIP over the same vectors: search alone, and encode + search."""
    import faiss

    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    model = service.embedder.model  # type: ignore[attr-defined]

    def encode(q: str) -> Any:
        return model.encode([q], normalize_embeddings=True, convert_to_numpy=True,
                            show_progress_bar=False)

    embedded = [encode(q) for q in queries]
    search = [_timed(partial(index.search, v, k)) for v in embedded]
    both = [_timed(partial(_encode_and_search, encode, index, q, k)) for q in queries]
    return {"raw_faiss_search_ms": percentiles(search),
            "raw_encode_and_search_ms": percentiles(both)}


def _encode_and_search(encode: Callable[[str], Any], index: Any, query: str, k: int) -> Any:
    return index.search(encode(query), k)


# --- asking and generation ----------------------------------------------------------------


def bench_ask(service: RagService, questions: Sequence[str], report: Report) -> dict[str, Any]:
    """End-to-end asks: each question fresh, then again from the response cache."""
    from rag.service import AskRequest

    fresh, first, cached = [], [], []
    for n, question in enumerate(questions):
        report("ask (uncached)", n, len(questions))
        answer = service.ask(AskRequest(question))
        fresh.append(answer.timings.total_ms)
        first.append(answer.timings.first_token_ms)
    for n, question in enumerate(questions):
        report("ask (cached)", n, len(questions))
        cached.append(_timed(partial(service.ask, AskRequest(question))))
    return {"questions": len(questions), "uncached_ms": percentiles(fresh),
            "first_token_ms": percentiles(first), "cached_ms": percentiles(cached)}


def bench_generation(
    service: RagService, question: str, options: BenchOptions, report: Report
) -> dict[str, Any]:
    """Prefill and decode speed of the engine's stream beside plain `model.generate` on a stock
    copy of the same model (loaded from the same files, none of the engine's changes)."""
    from rag.ask.prompt import build_prompt
    from rag.ask.retrieve import Query

    assert service.retriever is not None
    generator = service.generator
    results = service.retriever.retrieve(Query(question, service.settings.top_k))
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


Timed = tuple[dict[str, float], tuple[int, ...]]  # speeds, and the generated token ids


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
        prefill = _timed(lambda: model.generate(ids, max_new_tokens=1, **kwargs)) / 1000
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


# --- start-up -----------------------------------------------------------------------------


def bench_startup(settings: Settings, tmp: Path, report: Report) -> dict[str, Any]:
    """Time to ready of a fresh process over an empty data dir (it converts the model), then
    again over the same dir; each then ingests a file and answers, and reports its peak RSS."""
    data = tmp / "startup"
    runs = {}
    for n, name in enumerate(("first", "second")):
        report("start-up", n, 2)
        runs[name] = _start_process(settings, data)
    return runs


def _start_process(settings: Settings, data: Path) -> dict[str, Any]:
    env = os.environ | {"RAG_DATA_DIR": str(data), "RAG_CONVERTED_MODELS_DIR": str(data / "models"),
                        "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]),
                                                       os.environ.get("PYTHONPATH", "")])}
    start = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-c", "from eval.bench import serve_once; "
                              "serve_once()"], env=env, stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    ready_s = None
    lines = []
    for line in child.stdout:
        if line.strip() == READY:
            ready_s = time.perf_counter() - start
        else:
            lines.append(line)
    if child.wait() != 0 or ready_s is None:
        raise RuntimeError(f"the start-up benchmark process failed (exit {child.returncode}).")
    reported: dict[str, Any] = json.loads(lines[-1])
    return {"ready_s": ready_s} | reported


def serve_once() -> None:
    """Child process body: load the engine, say so, then ingest a file and answer once."""
    from rag.service import AskRequest, RagService

    service = RagService(Settings())
    service.load()
    print(READY, flush=True)
    start = time.perf_counter()
    service.ingest_file(SAMPLES / "ingestion.md")
    answer = service.ask(AskRequest("What is the default chunk size?"))
    api_mb, engine_mb = peak_rss_mb(), engine_peak_rss_mb(service.generator)
    print(json.dumps({"ingest_and_ask_s": time.perf_counter() - start,
                      "answer_tokens": answer.usage.completion_tokens,
                      "api_peak_rss_mb": api_mb, "engine_peak_rss_mb": engine_mb,
                      "peak_rss_mb": api_mb + engine_mb}), flush=True)


# --- headline figures ---------------------------------------------------------------------


def headline(results: dict[str, Any]) -> dict[str, Any]:
    """Medians and the engine / raw ratios, in one small table."""
    ing, ask, gen = results["ingest"], results["ask"], results["generation"]
    engine, raw = gen["engine"], gen["raw_generate"]
    starts = results.get("startup") or {}
    return {
        "ingest": {"chunks_per_s": ing["chunks_per_s"], "tokens_per_s": ing["tokens_per_s"],
                   "raw_encode_chunks_per_s": ing["raw_encode_chunks_per_s"],
                   "ratio_to_raw_encode": _ratio(ing["chunks_per_s"],
                                                 ing["raw_encode_chunks_per_s"])},
        "retrieval": {size: _retrieval_figures(r) for size, r in results["retrieval"].items()},
        "ask": {"uncached_p50_ms": ask["uncached_ms"]["p50"],
                "uncached_p95_ms": ask["uncached_ms"]["p95"],
                "cached_p50_ms": ask["cached_ms"]["p50"], "cached_p95_ms": ask["cached_ms"]["p95"],
                "first_token_p50_ms": ask["first_token_ms"]["p50"]},
        "generation": {
            "decode_tokens_per_s": engine["decode_tokens_per_s"],
            "raw_decode_tokens_per_s": raw["decode_tokens_per_s"],
            "decode_ratio": _ratio(engine["decode_tokens_per_s"], raw["decode_tokens_per_s"]),
            "prefill_tokens_per_s": engine["prefill_tokens_per_s"],
            "raw_prefill_tokens_per_s": raw["prefill_tokens_per_s"],
            "prefill_ratio": _ratio(engine["prefill_tokens_per_s"], raw["prefill_tokens_per_s"]),
            "first_token_ms": engine["first_token_ms"],
            "same_greedy_text_as_plain_generate": gen["same_greedy_tokens"],
            "prompt_lookup_speedup": _ratio(raw["total_ms"],
                                            gen["prompt_lookup_generate"]["total_ms"]),
            "llama_cpp_decode_tokens_per_s": gen["llama_cpp"].get("decode_tokens_per_s")},
        "serving": _serving_figures(results.get("serving") or {}),
        "engines": {k: v for k, v in (results.get("engines") or {}).items()
                    if k in ("process_to_thread_ratio", "same_answers", "skipped")},
        "bfloat16": {k: v for k, v in (results.get("bfloat16") or {}).items()
                     if k in ("prompts", "same_greedy_answers", "speed_ratio")},
        "memory": {"serving_peak_rss_mb": (starts.get("second") or {}).get("peak_rss_mb")},
        "startup": {f"{name}_ready_s": run["ready_s"] for name, run in starts.items()},
    }


def _serving_figures(serving: dict[str, Any]) -> dict[str, Any]:
    if "concurrency" not in serving:
        return serving
    levels = serving["concurrency"]
    top = levels[max(levels, key=int)]
    return {
        "aggregate_tokens_per_s": {n: f["aggregate_tokens_per_s"] for n, f in levels.items()},
        "aggregate_ratio_at_most_concurrent": top["aggregate_ratio_to_one"],
        "slowest_first_token_ratio_at_most_concurrent": top["slowest_first_token_ratio_to_one"],
        "warm_prefix_first_token_ratio": serving["prefix"]["warm_ratio_to_cold"],
    }


def _retrieval_figures(r: dict[str, Any]) -> dict[str, Any]:
    raw = r["raw_encode_and_search_ms"]["p50"]
    return {
        "dense_p50_ms": r["dense_ms"]["p50"], "dense_p95_ms": r["dense_ms"]["p95"],
        "hybrid_p50_ms": r["hybrid_ms"]["p50"], "hybrid_p95_ms": r["hybrid_ms"]["p95"],
        "raw_faiss_search_p50_ms": r["raw_faiss_search_ms"]["p50"],
        "raw_encode_and_search_p50_ms": raw,
        "dense_ratio_to_raw": _ratio(r["dense_ms"]["p50"], raw),
        "hybrid_ratio_to_raw": _ratio(r["hybrid_ms"]["p50"], raw),
    }
