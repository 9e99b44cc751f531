"""Prometheus metrics: HTTP requests and latencies from Litestar's middleware, plus the engine's
answers (latency, first token, tokens, cache hits and misses), ingestion queue depth and index size.

The queue depth is read at scrape time from the app's IngestService: the jobs waiting in its
queue (in-process, or SAQ on Redis or PostgreSQL), not the running ones. Reads refused for
access (`rag_access_refused_total`) are counted by kind only, never by document or key.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from litestar import Response, get
from litestar.plugins.prometheus import PrometheusConfig
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Gauge, Histogram
from prometheus_client import generate_latest as prometheus_text
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from ingest.queue import QUEUE_ERRORS
from ingest.service import IngestService
from rag.access import REFUSED
from rag.service import Figures
from rag.types import Answer

log = logging.getLogger(__name__)

HTTP = PrometheusConfig(app_name="rag", prefix="rag_http", group_path=True, exclude=["/metrics"])

ASK_SECONDS = Histogram(
    "rag_ask_seconds", "Time to answer a question, end to end.", ["cached", "stream"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 40, 80),
)
FIRST_TOKEN_SECONDS = Histogram(
    "rag_first_token_seconds", "Time from question to the first answer token (uncached).",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 40),
)
TOKENS = Counter("rag_tokens", "Tokens through the generator, by kind (prompt, completion).",
                 ["kind"])
CACHE = Counter("rag_answer_cache", "Answer cache lookups, by result (hit, miss).", ["result"])
STREAM_ERRORS = Counter("rag_stream_errors", "Streamed answers that failed after they began.",
                        ["error"])
QUEUE = Gauge("rag_ingest_queue_depth", "Ingestion jobs waiting in the queue.")
INDEX_VECTORS = Gauge("rag_index_vectors", "Chunk vectors in the searchable index.")
INDEX_VERSION = Gauge("rag_index_version", "Version of the loaded index.")


class GeneratorCollector:
    """The generator's scheduling figures, read at scrape time from the app being scraped."""

    def __init__(self) -> None:
        self.stats: dict[str, float] = {}

    def collect(self) -> list[Metric]:
        s = self.stats
        prefix = CounterMetricFamily("rag_prefix_cache", "Prompt-prefix KV lookups, by result.",
                                     labels=["result"])
        prefix.add_metric(["hit"], s.get("prefix_hits", 0))
        prefix.add_metric(["miss"], s.get("prefix_misses", 0))
        drafts = CounterMetricFamily(
            "rag_generator_lookup_drafts", "Prompt-lookup draft tokens checked, by result.",
            labels=["result"])
        drafts.add_metric(["accepted"], s.get("accepted", 0))
        drafts.add_metric(["rejected"], s.get("drafted", 0) - s.get("accepted", 0))
        return [
            GaugeMetricFamily("rag_generator_queue_depth", "Requests waiting for a batch slot.",
                              value=s.get("waiting", 0)),
            GaugeMetricFamily("rag_generator_batch_size", "Requests in the running decode batch.",
                              value=s.get("running", 0)),
            CounterMetricFamily("rag_generator_steps", "Batched decode steps run.",
                                value=s.get("steps", 0)),
            CounterMetricFamily("rag_generator_rejected",
                                "Requests refused because the queue was full (503).",
                                value=s.get("rejected", 0)),
            drafts,
            prefix,
            CounterMetricFamily("rag_prefix_cache_reused_tokens",
                                "Prompt tokens whose KV came from the prefix cache.",
                                value=s.get("prefix_reused_tokens", 0)),
            GaugeMetricFamily("rag_prefix_cache_tokens", "Prompt tokens held by the prefix cache.",
                              value=s.get("prefix_tokens", 0)),
        ]


GENERATOR = GeneratorCollector()
REGISTRY.register(GENERATOR)
REFUSED_KINDS = ("document", "job", "view", "cache", "conversation", "feedback")


class RefusedCollector:
    """Reads refused because the key may not see the record, by kind (rag.access.REFUSED)."""

    def collect(self) -> list[Metric]:
        counts = REFUSED.snapshot()
        refused = CounterMetricFamily(
            "rag_access_refused", "Reads refused (answered as unknown) because the key may "
            "not see the record, by kind.", labels=["kind"])
        for kind in sorted({*REFUSED_KINDS, *counts}):
            refused.add_metric([kind], counts.get(kind, 0))
        return [refused]


REGISTRY.register(RefusedCollector())


def record_answer(answer: Answer, stream: bool) -> None:
    """Count one answered question."""
    ASK_SECONDS.labels(cached=str(answer.cached).lower(), stream=str(stream).lower()).observe(
        answer.timings.total_ms / 1000)
    CACHE.labels(result="hit" if answer.cached else "miss").inc()
    if not answer.cached:
        FIRST_TOKEN_SECONDS.observe(answer.timings.first_token_ms / 1000)
        TOKENS.labels(kind="prompt").inc(answer.usage.prompt_tokens)
        TOKENS.labels(kind="completion").inc(answer.usage.completion_tokens)


def record_stream_error(error: Exception) -> None:
    """Count an answer that failed mid-stream (its HTTP status was already 200)."""
    STREAM_ERRORS.labels(error=type(error).__name__).inc()


async def _queue_depth(ingestion: IngestService) -> int:
    try:
        return await ingestion.queue_depth()
    except QUEUE_ERRORS as exc:  # a metrics scrape never fails because the queue is down
        log.warning("ingestion queue depth unavailable: %s", exc)
        return 0


@get("/metrics", tags=["ops"], media_type=CONTENT_TYPE_LATEST)
async def metrics(figures: Callable[[], Figures], ingestion: IngestService) -> Response[bytes]:
    """Prometheus metrics in the text exposition format."""
    QUEUE.set(await _queue_depth(ingestion))
    engine = figures()
    INDEX_VECTORS.set(engine.index_vectors)
    INDEX_VERSION.set(engine.index_version)
    GENERATOR.stats = engine.generator
    return Response(prometheus_text(REGISTRY), media_type=CONTENT_TYPE_LATEST)
