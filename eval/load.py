"""A bounded loopback load test of a running API: `python -m eval.load` (or `make load`).

`clients` asyncio workers share one httpx client and loop over a weighted mix of uncached asks
(each question new), cached asks (a few questions answered once before the clock starts; the
cache key holds the index version, so after each upload or delete they are answered anew once),
uploads (a new small text file each), document lists and deletes (of this run's uploads), until
`duration_s` has passed or `max_requests` were sent; then it stops by itself. Afterwards it waits
for every accepted upload's job and checks that each one is indexed exactly once: indexed,
listed once, and the index holding exactly the listed documents' chunks (no vector twice).

The summary (JSON): requests, requests/s, statuses and errors by status, and per route the
answers (2xx; for asks, their modes), the refusals (429 and 503: the service protecting itself,
counted apart from errors, with their share of the route's requests) and p50/p95/p99 over the
answers alone: latencies are kept per route per status class (2xx, 429, 503, other), since a
refusal is fast and counting it would make the percentiles drop as the service sheds load. The
run is ok with no errors, every upload indexed once, and every ask route that was asked
answering at least once.
With `--serve` it starts a throw-away `rag serve` (sample corpus, an admin key) on loopback.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import secrets
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ROUTES = ("ask_uncached", "ask_cached", "upload", "list", "delete")
REFUSALS = (429, 503)  # rate limited, or not ready / busy: the service protecting itself
# Questions the served documents answer (the sample corpus of `rag serve --sample`): cached
# asks repeat them; an uncached ask is one of them made new by a request tag, so it is
# retrieved, generated and checked like a user's question (not refused for lack of evidence).
QUESTIONS = (
    "What is the default chunk size?",
    "How are API keys sent?",
    "How do I check the state of an ingestion job?",
    "Which file types can be uploaded?",
)
WORDS = ("amber", "basalt", "cedar", "delta", "ember", "fjord", "granite", "harbour", "indigo",
         "juniper", "kestrel", "lagoon", "meadow", "nectar", "orchid", "pebble", "quartz")


@dataclass
class LoadConfig:
    base_url: str
    key: str | None = None
    clients: int = 50
    duration_s: float = 60.0
    max_requests: int | None = None
    timeout_s: float = 120.0
    settle_s: float = 600.0  # how long to wait for the accepted uploads' jobs afterwards
    seed: int = 0
    questions: tuple[str, ...] = QUESTIONS  # ones the served documents answer
    mix: dict[str, float] = field(default_factory=lambda: {
        "ask_uncached": 0.10, "ask_cached": 0.40, "upload": 0.15, "list": 0.25, "delete": 0.10})


@dataclass
class Uploads:
    accepted: dict[str, str] = field(default_factory=dict)  # document id -> job id
    deleted: set[str] = field(default_factory=set)


class Run:
    """What the workers share: the clock, the budget, the samples and the uploads."""

    def __init__(self, config: LoadConfig, client: httpx.AsyncClient) -> None:
        self.config, self.client = config, client
        self.random = random.Random(config.seed)
        self.tag = secrets.token_hex(4)
        # route -> status class -> milliseconds
        self.samples: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
        self.statuses: dict[str, Counter[str]] = defaultdict(Counter)
        self.cache_hits: Counter[str] = Counter()
        self.modes: dict[str, Counter[str]] = defaultdict(Counter)  # of the asks answered
        self.uploads = Uploads()
        self.sent = 0
        self.deadline = 0.0

    def take(self) -> bool:
        """One more request, if the duration and the request budget allow it."""
        if time.monotonic() >= self.deadline:
            return False
        if self.config.max_requests is not None and self.sent >= self.config.max_requests:
            return False
        self.sent += 1
        return True

    async def timed(self, route: str, method: str, url: str,
                    **kwargs: Any) -> httpx.Response | None:
        started = time.perf_counter()
        try:
            response = await self.client.request(method, url, **kwargs)
        except httpx.HTTPError as exc:
            self.statuses[route][f"exception:{type(exc).__name__}"] += 1
            return None
        elapsed_ms = (time.perf_counter() - started) * 1000
        self.samples[route][status_class(response.status_code)].append(elapsed_ms)
        self.statuses[route][str(response.status_code)] += 1
        if route.startswith("ask") and response.status_code == 200:
            answer = response.json()
            self.cache_hits[route] += bool(answer.get("cached"))
            self.modes[route][answer.get("mode") if answer.get("answer") else "empty"] += 1
        return response

    async def one(self, route: str, n: int) -> None:
        if route == "ask_uncached":
            question = f"{self.random.choice(self.config.questions)} (request {self.tag}-{n})"
            await self.timed(route, "POST", "/v1/ask", json={"question": question})
        elif route == "ask_cached":
            question = self.random.choice(self.config.questions)
            await self.timed(route, "POST", "/v1/ask", json={"question": question})
        elif route == "upload":
            await self.upload(n)
        elif route == "list":
            await self.timed(route, "GET", "/v1/documents", params={"limit": 50})
        else:
            await self.delete()

    async def upload(self, n: int) -> None:
        word = self.random.choice(WORDS)
        text = (f"Load note {self.tag}-{n}. The {word} crate on shelf {n} weighs {n % 97 + 3} "
                f"kilograms and was counted by team {word}.\n")
        response = await self.timed("upload", "POST", "/v1/documents", files=[
            ("file", (f"note-{self.tag}-{n}.txt", text.encode(), "text/plain"))],
            data={"collection": "load"})
        if response is not None and response.status_code == 202:
            for doc in response.json()["documents"]:
                self.uploads.accepted[doc["document_id"]] = doc["job_id"]

    async def delete(self) -> None:
        alive = sorted(set(self.uploads.accepted) - self.uploads.deleted)
        if not alive:  # nothing of ours to delete yet: list instead
            await self.timed("list", "GET", "/v1/documents", params={"limit": 50})
            return
        doc_id = self.random.choice(alive)
        self.uploads.deleted.add(doc_id)
        await self.timed("delete", "DELETE", f"/v1/documents/{doc_id}")

    async def worker(self) -> None:
        routes, weights = list(self.config.mix), list(self.config.mix.values())
        while self.take():
            await self.one(self.random.choices(routes, weights)[0], self.sent)


def status_class(status: int) -> str:
    """Which latency samples a response joins: 2xx, 429, 503 or other."""
    if 200 <= status < 300:
        return "2xx"
    return str(status) if status in REFUSALS else "other"


def percentiles(samples: list[float]) -> dict[str, float | None]:
    """p50, p95, p99 and max of milliseconds, and their count."""
    if not samples:
        return {"p50_ms": None, "p95_ms": None, "p99_ms": None, "max_ms": None, "count": 0}
    p50, p95, p99 = np.percentile(samples, [50, 95, 99])
    return {"p50_ms": round(float(p50), 1), "p95_ms": round(float(p95), 1),
            "p99_ms": round(float(p99), 1), "max_ms": round(max(samples), 1),
            "count": len(samples)}


async def warm(client: httpx.AsyncClient, questions: tuple[str, ...]) -> None:
    """Answer the cached questions once, so they are cached when the clock starts."""
    for question in questions:
        response = await client.post("/v1/ask", json={"question": question})
        response.raise_for_status()


async def list_all(client: httpx.AsyncClient) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    while True:
        page = (await client.get("/v1/documents", params={"offset": len(items), "limit": 200}
                                 )).json()
        items += page["items"]
        if not page["items"] or len(items) >= page["total"]:
            return items


def index_vectors(metrics: str) -> int:
    found = re.search(r"^rag_index_vectors (\S+)$", metrics, re.MULTILINE)
    return int(float(found.group(1))) if found else -1


async def check_uploads(run: Run) -> dict[str, Any]:
    """Every accepted, undeleted upload indexed exactly once; every deleted one gone."""
    client, uploads = run.client, run.uploads
    kept = {d: j for d, j in uploads.accepted.items() if d not in uploads.deleted}
    deadline = time.monotonic() + run.config.settle_s
    jobs: dict[str, dict[str, Any]] = {}
    while True:
        for doc_id, job_id in kept.items():
            if jobs.get(doc_id, {}).get("state") not in ("done", "failed", "cancelled"):
                jobs[doc_id] = (await client.get(f"/v1/jobs/{job_id}")).json()
        pending = [d for d in kept if jobs[d].get("state") not in ("done", "failed", "cancelled")]
        if not pending or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)
    listed = await list_all(client)
    ids = Counter(d["id"] for d in listed)
    by_id = {d["id"]: d for d in listed}
    problems = [f"{d}: job {jobs[d].get('state')}, document "
                f"{by_id.get(d, {}).get('state', 'missing')}" for d in kept
                if jobs[d].get("state") != "done" or by_id.get(d, {}).get("state") != "indexed"
                or by_id[d]["chunk_count"] < 1]
    problems += [f"{d}: listed {n} times" for d, n in ids.items() if n > 1]
    problems += [f"{d}: deleted but still listed" for d in uploads.deleted if d in ids]
    vectors = index_vectors((await client.get("/metrics")).text)
    chunks = sum(d["chunk_count"] for d in listed if d["state"] == "indexed")
    if vectors != chunks:
        problems.append(f"the index holds {vectors} vectors, the indexed documents {chunks} "
                        "chunks")
    return {"accepted": len(uploads.accepted), "deleted": len(uploads.deleted),
            "kept": len(kept), "indexed_once": len(kept) - len(
                [p for p in problems if p.split(":")[0] in kept]),
            "retried": sum(1 for d in kept if jobs[d].get("attempts", 1) > 1),
            "index_vectors": vectors, "indexed_chunks": chunks, "problems": problems,
            "exactly_once": not problems}


def route_figures(run: Run, route: str) -> dict[str, Any]:
    """One route's requests, answers, refusals, and latency percentiles over its answers (each
    status class's own under `latency_by_class`)."""
    statuses = run.statuses.get(route, Counter())
    requests = sum(statuses.values())
    samples = run.samples.get(route, {})
    refused = {status: n for status, n in statuses.items()
               if status.isdigit() and int(status) in REFUSALS}
    figures: dict[str, Any] = {
        "requests": requests, "statuses": dict(statuses),
        "answered": len(samples.get("2xx", [])),
        "refused": sum(refused.values()), "refused_by_status": refused,
        "refused_share": round(sum(refused.values()) / requests, 3) if requests else 0.0,
        **percentiles(samples.get("2xx", [])),
        "latency_by_class": {cls: percentiles(ms) for cls, ms in sorted(samples.items())}}
    if route.startswith("ask"):  # every index change (an upload, a delete) is a new cache
        figures["cache_hits"] = run.cache_hits[route]
        figures["modes"] = dict(run.modes[route])
    return figures


def summarize(run: Run, elapsed: float, uploads: dict[str, Any]) -> dict[str, Any]:
    """The run's summary (see the module docstring)."""
    by_route = {route: route_figures(run, route) for route in ROUTES}
    errors: Counter[str] = Counter()
    refused: Counter[str] = Counter()
    for route in ROUTES:
        for status, count in run.statuses.get(route, Counter()).items():
            if status.isdigit() and int(status) in REFUSALS:
                refused[status] += count
            elif not (status.isdigit() and int(status) < 400):
                errors[status] += count
    total = sum(r["requests"] for r in by_route.values())
    unanswered = [route for route, r in by_route.items()
                  if route.startswith("ask") and r["requests"] and not r["answered"]]
    return {
        "config": {k: v for k, v in asdict(run.config).items() if k != "key"},
        "elapsed_s": round(elapsed, 2), "requests": total,
        "requests_per_s": round(total / elapsed, 1) if elapsed else 0.0,
        "errors_by_status": dict(errors), "errors": sum(errors.values()),
        "refused_by_status": dict(refused), "refused": sum(refused.values()),
        "unanswered_ask_routes": unanswered, "routes": by_route, "uploads": uploads,
        "ok": not errors and not unanswered and uploads["exactly_once"],
    }


async def run_load(config: LoadConfig) -> dict[str, Any]:
    """Run the load as configured and return its summary (see the module docstring)."""
    headers = {"Authorization": f"Bearer {config.key}"} if config.key else {}
    limits = httpx.Limits(max_connections=config.clients, max_keepalive_connections=config.clients)
    async with httpx.AsyncClient(base_url=config.base_url, headers=headers, limits=limits,
                                 timeout=config.timeout_s) as client:
        await warm(client, config.questions)
        run = Run(config, client)
        started = time.monotonic()
        run.deadline = started + config.duration_s
        await asyncio.gather(*(run.worker() for _ in range(config.clients)))
        elapsed = time.monotonic() - started
        uploads = await check_uploads(run)
    return summarize(run, elapsed, uploads)


@contextmanager
def throwaway_server(port: int, key: str, models_dir: Path | None) -> Iterator[str]:
    """`rag serve --sample` on 127.0.0.1:`port` over a temporary data dir; yields its URL."""
    with tempfile.TemporaryDirectory(prefix="rag-load-") as data:
        env = {**os.environ, "RAG_DATA_DIR": data, "RAG_API_KEYS": json.dumps({key: ["admin"]}),
               "RAG_RATE_LIMIT_PER_MINUTE": os.environ.get("RAG_RATE_LIMIT_PER_MINUTE",
                                                           "1000000")}
        if models_dir is not None:
            env["RAG_CONVERTED_MODELS_DIR"] = str(models_dir.resolve())
        log = open(Path(data) / "serve.log", "wb")  # noqa: SIM115 - closed below
        print(f"rag serve log: {log.name}", flush=True)
        server = subprocess.Popen([sys.executable, "-m", "rag.cli", "serve", "--sample",
                                   "--host", "127.0.0.1", "--port", str(port)],
                                  env=env, stdout=log, stderr=subprocess.STDOUT)
        base = f"http://127.0.0.1:{port}"
        try:
            wait_ready(base, server)
            yield base
        finally:
            server.terminate()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait(timeout=30)
            log.close()


def wait_ready(base: str, server: subprocess.Popen[bytes], timeout_s: float = 600) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"rag serve exited with {server.returncode}")
        try:
            if httpx.get(f"{base}/ready", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"rag serve was not ready after {timeout_s} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eval.load", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-url", help="API to load (else --serve starts one)")
    parser.add_argument("--key", default=os.environ.get("RAG_LOAD_KEY"), help="API key")
    parser.add_argument("--serve", action="store_true", help="start a throw-away rag serve")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--models-dir", type=Path, help="converted models to reuse (--serve)")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds")
    parser.add_argument("--max-requests", type=int)
    parser.add_argument("--question", action="append", dest="questions",
                        help="a question the served documents answer (repeatable; default: "
                             "ones about the sample corpus)")
    parser.add_argument("--out", type=Path, default=Path("artifacts/load/summary.json"))
    args = parser.parse_args(argv)
    if not args.base_url and not args.serve:
        parser.error("give --base-url, or --serve to start a throw-away server")
    key: str | None = args.key or (secrets.token_urlsafe(24) if args.serve else None)

    def go(base: str) -> dict[str, Any]:
        config = LoadConfig(base_url=base, key=key, clients=args.clients,
                            duration_s=args.duration, max_requests=args.max_requests,
                            questions=tuple(args.questions or QUESTIONS))
        return asyncio.run(run_load(config))

    if args.serve:
        with throwaway_server(args.port, key or "", args.models_dir) as base:
            summary = go(base)
    else:
        summary = go(args.base_url)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps({k: summary[k] for k in ("requests", "requests_per_s", "errors",
                                              "errors_by_status", "refused_by_status",
                                              "unanswered_ask_routes")}))
    for route, f in summary["routes"].items():
        print(f"{route:>13}: {f['requests']:6d} requests, {f['answered']} answered "
              f"(p50 {f['p50_ms']} ms, p95 {f['p95_ms']} ms, p99 {f['p99_ms']} ms), "
              f"{f['refused']} refused ({f['refused_share']:.1%})")
    uploads = summary["uploads"]
    print(f"uploads: {uploads['accepted']} accepted, {uploads['deleted']} deleted, "
          f"{uploads['indexed_once']} of {uploads['kept']} kept indexed exactly once; "
          f"problems: {uploads['problems'][:5]}")
    print(f"written to {args.out}")
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
