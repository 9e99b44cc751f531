"""What every `rag bench` section shares: its options, the progress callback, the shipped
corpus and questions, and how a figure is taken (a timed call, percentiles, peak memory)."""

from __future__ import annotations

import resource
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from eval.metrics import latency

if TYPE_CHECKING:
    from rag.generation.base import Generator

SAMPLES = Path(__file__).parents[2] / "rag" / "samples"
SAMPLE_SUITE = Path(__file__).parents[1] / "suites" / "sample"

Report = Callable[[str, int, int], None]  # (stage, done, total): progress of the bench


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
    compare_model: str | None = None  # another generator to time the same asks with
    access_chunks: int = 10_000  # the tenant-filter corpus (eval.bench.access; 0: skip it)
    access_questions: int | None = None  # Notre Dame questions for its recall (None: all 269)
    access_asks: int = 20  # questions each of its two keys asks, for its ask latency


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


def timed(call: Callable[[], object]) -> float:
    """Milliseconds one call takes."""
    start = time.perf_counter()
    call()
    return (time.perf_counter() - start) * 1000


def speeds(prompt_tokens: int, new_tokens: int, first_s: float, total_s: float
           ) -> dict[str, float]:
    """Prefill and decode speeds of one answer from its first-token and total seconds."""
    decode_s = max(total_s - first_s, 1e-9)
    return {"new_tokens": new_tokens, "first_token_ms": first_s * 1000,
            "total_ms": total_s * 1000, "prefill_tokens_per_s": prompt_tokens / first_s,
            "decode_tokens_per_s": max(new_tokens - 1, 0) / decode_s}


def medians(rounds: Sequence[dict[str, float]]) -> dict[str, float]:
    """Each figure's median over rounds of the same measurement."""
    return {key: float(np.median([r[key] for r in rounds])) for key in rounds[0]}
