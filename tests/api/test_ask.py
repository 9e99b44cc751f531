"""POST /v1/ask as JSON and as Server-Sent Events, with the packaged models."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from api.app import create_app
from rag.ask.service import AskRequest
from rag.errors import NotReady
from rag.generation.base import Generator, TokenCounts, TokenStream
from rag.service import RagService
from rag.settings import Settings
from rag.types import Prompt, Usage
from tests.api.helpers import app_settings, ingest_corpus, live_server, parse_sse, serving

pytestmark = pytest.mark.slow

BEES = "Who is the beekeeper of the Larkspur apiary?"
TRAIN = "When does the Aldgate night train depart?"
LONG = ("Describe the Larkspur apiary in detail: its bees, its honey, each summer, its "
        "beekeeper, and everything else the documents say about it.")
# Answers to BEES as a model might write them: checked against bees.txt, the first sentence of
# each passes, `HONEY` passes, the rest name what bees.txt does not (Joe Jackson, 400, Paris).
ODUYA = "The beekeeper is called Miriam Oduya."
HONEY = "Her bees produce 31 kilograms of honey per hive each summer."
PASSES = f"{ODUYA} {HONEY}"
REJECTED = "The beekeeper is Joe Jackson, who keeps 400 hives near Paris."
SECOND_REJECTED = f"{ODUYA} She keeps 400 hives near Paris."


@dataclass
class Run:
    """One generation seen by SpyGenerator."""

    stop: threading.Event | None
    pieces: int = 0
    finished: threading.Event = field(default_factory=threading.Event)


class OverInner:
    """What a test generator takes from the real one it stands over: its name, tokenizer,
    context window and figures (the session fixture loaded it)."""

    inner: Generator

    @property
    def tokenizer(self) -> Any:
        return self.inner.tokenizer

    @property
    def context_window(self) -> int:
        return self.inner.context_window

    def load(self) -> None:
        """The inner generator is loaded by the session fixture."""

    def stats(self) -> dict[str, float]:
        return self.inner.stats()


class SpyGenerator(OverInner):
    """The real generator, recording each run's stop event and how many pieces it produced;
    with `fail_after` it raises mid-answer, as a generation server that goes away would."""

    def __init__(self, inner: Generator, fail_after: int | None = None) -> None:
        self.inner, self.name, self.fail_after = inner, inner.name, fail_after
        self.runs: list[Run] = []

    def stream(self, prompt: Prompt, max_new_tokens: int,
               stop: threading.Event | None = None) -> SpyStream:
        run = Run(stop)
        self.runs.append(run)
        return SpyStream(run, self.inner.stream(prompt, max_new_tokens, stop), self.fail_after)


class SpyStream(Iterator[str]):
    """A TokenStream that counts what it hands out and notes when it ends."""

    def __init__(self, run: Run, inner: TokenStream, fail_after: int | None) -> None:
        self.run, self.inner, self.fail_after = run, inner, fail_after

    def __next__(self) -> str:
        if self.fail_after is not None and self.run.pieces >= self.fail_after:
            self.close()
            raise NotReady("The generation server went away.", "Try again later.")
        try:
            piece = next(self.inner)
        except StopIteration:
            self.run.finished.set()
            raise
        self.run.pieces += 1
        return piece

    @property
    def usage(self) -> Usage:
        return self.inner.usage

    def close(self) -> None:
        self.inner.close()
        self.run.finished.set()


class ScriptedGenerator(OverInner):
    """A stand-in for the model that streams a fixed `answer` word by word (the prompt is built
    with the real model's tokenizer, and the answer is held to the real check); with
    `fail_after` it raises after that many pieces, as a generation server that goes away would."""

    def __init__(self, inner: Generator, answer: str = "", fail_after: int | None = None) -> None:
        self.inner, self.name = inner, inner.name
        self.answer, self.fail_after = answer, fail_after
        self.runs = 0

    def stream(self, prompt: Prompt, max_new_tokens: int,
               stop: threading.Event | None = None) -> TokenStream:
        self.runs += 1
        counts = TokenCounts(prompt.prompt_tokens)
        pieces = re.findall(r"\s*\S+", self.answer)[:max_new_tokens]

        def stream() -> Iterator[str]:
            for n, piece in enumerate(pieces):
                if self.fail_after is not None and n >= self.fail_after:
                    raise NotReady("The generation server went away.", "Try again later.")
                counts.completion_tokens += 1
                yield piece

        return TokenStream(stream(), counts)  # type: ignore[arg-type]


def scripted_service(root: Path, embedder: Any, generator: Any, **settings: Any) -> tuple[
        RagService, ScriptedGenerator]:
    """A service over the test corpus whose model says what the test scripts."""
    scripted = ScriptedGenerator(generator, fail_after=settings.pop("fail_after", None))
    service = RagService(Settings(data_dir=root / "data", top_k=3, **settings),
                         embedder=embedder, generator=scripted)  # type: ignore[arg-type]
    service.load()
    ingest_corpus(service, root / "corpus")
    return service, scripted


@pytest.fixture(scope="module")
def scripted_api(tmp_path_factory: pytest.TempPathFactory, embedder: Any, generator: Any
             ) -> Iterator[tuple[RagService, ScriptedGenerator]]:
    service, scripted = scripted_service(tmp_path_factory.mktemp("scripted"), embedder,
                                         generator)
    yield service, scripted
    service.close()


def spied_service(root: Path, embedder: Any, generator: Any, **settings: Any) -> tuple[
        RagService, SpyGenerator]:
    spy = SpyGenerator(generator, settings.pop("fail_after", None))
    service = RagService(Settings(data_dir=root / "data", top_k=3, **settings),
                         embedder=embedder, generator=spy)  # type: ignore[arg-type]
    service.load()
    ingest_corpus(service, root / "corpus")
    return service, spy


def test_answer_as_json_then_from_cache(corpus_service: RagService) -> None:
    corpus_service.cache.clear()
    with serving(corpus_service) as client:
        first = client.post("/v1/ask", json={"question": BEES})
        assert first.status_code == 200, first.text
        body = first.json()
        assert body["answer"] and body["cached"] is False
        top = body["citations"][0]
        assert top["filename"] == "bees.txt" and "Miriam Oduya" in top["text"]
        assert top["number"] == 1 and len(top["document_id"]) == 64 and top["chunk_id"] >= 1
        assert 0 <= top["start"] < top["end"] and top["score"] > 0 and "page" in top
        assert body["usage"]["prompt_tokens"] > 0 and body["usage"]["completion_tokens"] > 0
        t = body["timings"]
        assert t["total_ms"] >= t["generate_ms"] > 0 and t["first_token_ms"] > t["retrieve_ms"] > 0
        assert body["model"] and body["index_version"] >= 1

        again = client.post("/v1/ask", json={"question": "who is the beekeeper of the "
                                                          "Larkspur apiary"})
        assert again.json()["cached"] is True
        assert again.json()["answer"] == body["answer"]
        assert again.json()["citations"] == body["citations"]


def test_streamed_answer_is_tokens_then_citations_then_done(corpus_service: RagService) -> None:
    corpus_service.cache.clear()
    with serving(corpus_service) as client:
        streamed = client.post("/v1/ask", json={"question": TRAIN, "stream": True})
        assert streamed.status_code == 200
        assert streamed.headers["content-type"].startswith("text/event-stream")
        events = parse_sse(streamed.text)
        names = [e.event for e in events]
        assert names[-2:] == ["citations", "done"] and set(names[:-2]) == {"token"}
        citations = events[-2].json()
        assert citations[0]["filename"] == "rail.txt" and "platform 9" in citations[0]["text"]
        done = events[-1].json()
        assert done["cached"] is False and done["usage"]["completion_tokens"] > 0
        assert done["timings"]["first_token_ms"] > 0

        # The tokens are the checked answer: the model's sentences that passed, or a quote of
        # the evidence instead where none did; `done` carries it whole.
        streamed = "".join(e.data for e in events if e.event == "token")
        assert streamed == done["answer"]
        assert done["mode"] in ("generated", "quote") and done["evidence"]
        if done["mode"] == "generated":
            assert done["answer"] in done["generated_text"]
        else:
            assert done["evidence"][0]["text"] in done["answer"]

        # The same question as JSON now comes from the cache: the same answer, the same sources.
        whole = client.post("/v1/ask", json={"question": TRAIN}).json()
        assert whole["cached"] is True
        assert done["answer"] == whole["answer"] and done["evidence"] == whole["evidence"]
        assert whole["citations"] == citations

        cached = parse_sse(client.post("/v1/ask", json={"question": TRAIN, "stream": True}).text)
        assert cached[-1].json()["cached"] is True
        assert "".join(e.data for e in cached if e.event == "token") == whole["answer"]


@pytest.mark.parametrize(
    ("request_kwargs", "status", "says"),
    [
        ({"json": {"question": ""}}, 422, "The question is empty"),
        ({"json": {"question": "   ", "stream": True}}, 422, "The question is empty"),
        ({"json": {"question": "why " * 600}}, 422, "the limit is 2000"),
        ({"json": {"question": BEES, "collection": "nope"}}, 404, "Collection 'nope'"),
        ({"json": {"question": BEES, "top_k": 0}}, 400, "top_k"),
        ({"json": {"question": BEES, "top_k": 51}}, 400, "top_k"),
        ({"json": {"question": BEES, "colour": "red"}}, 400, "colour"),
        ({"json": {"question": BEES, "stream": 0}}, 400, "stream"),  # strict JSON types
        ({"json": {"question": BEES, "stream": "true"}}, 400, "stream"),
        ({"json": {"question": BEES, "top_k": "3"}}, 400, "top_k"),
        ({"json": {"question": BEES, "top_k": True}}, 400, "top_k"),
        ({"json": {"question": BEES, "filters": {"owner": "me"}}}, 400, "owner"),
        ({"json": {}}, 400, "question"),
        ({"json": ["a question"]}, 400, ""),
        ({"content": b'{"question": "unterminated', "headers": {
            "content-type": "application/json"}}, 400, "not valid JSON"),
        ({"content": b"question=hi", "headers": {
            "content-type": "application/x-www-form-urlencoded"}}, 415, "application/json"),
        ({"content": b"<q>hi</q>", "headers": {"content-type": "application/xml"}}, 415,
         "Content-Type: application/json"),
    ],
)
def test_bad_input_is_a_4xx_that_says_what_to_fix(
    corpus_service: RagService, request_kwargs: dict[str, Any], status: int, says: str
) -> None:
    with serving(corpus_service) as client:
        response = client.post("/v1/ask", **request_kwargs)
    assert response.status_code == status, response.text
    body = response.json()
    assert says in body["message"] + str(body.get("details")), body
    assert body["error"] and body["hint"]


@pytest.mark.parametrize(("answer", "tokens", "mode", "short"), [
    (PASSES, [ODUYA, f" {HONEY}"], "generated", "Miriam Oduya"),
    (REJECTED, None, "quote", None),
    (SECOND_REJECTED, [ODUYA], "generated", "Miriam Oduya"),
], ids=["passes", "rejected", "second-rejected"])
def test_only_checked_text_is_streamed_and_it_is_the_answer(
    scripted_api: tuple[RagService, ScriptedGenerator], answer: str, tokens: list[str] | None,
    mode: str, short: str | None,
) -> None:
    """A sentence at a time, each once it passed the check; a rejected one never, the quote
    that replaces the answer instead; joined, the tokens are the final answer."""
    service, model = scripted_api
    model.answer = answer
    with serving(service) as client:
        service.cache.clear()
        whole = client.post("/v1/ask", json={"question": BEES}).json()
        service.cache.clear()
        events = parse_sse(client.post("/v1/ask", json={"question": BEES, "stream": True}).text)
    names = [e.event for e in events]
    assert names[-2:] == ["citations", "done"] and set(names[:-2]) == {"token"}, names
    streamed, done = [e.data for e in events if e.event == "token"], events[-1].json()
    assert "".join(streamed) == done["answer"] == whole["answer"]
    assert done["mode"] == mode and done["generated_text"] == answer and not done["cached"]
    assert streamed == (tokens or [done["answer"]])
    if mode == "quote":
        quoted = re.fullmatch(r'"(.+)" \[\d+\]', done["answer"])
        assert quoted and quoted.group(1) == done["evidence"][0]["text"], done["answer"]
    # The rejected sentences were checked, and none of them reached the client.
    rejected = [s["text"] for s in done["sentences"] if not s["supported"]]
    assert len(rejected) == (answer != PASSES)
    assert not [w for w in ("Joe", "400", "Paris") if w in "".join(streamed)]
    t = done["timings"]
    assert t["first_sentence_ms"] >= t["first_token_ms"] > 0
    # Who asks for a name: the short answer is it, as the evidence has it, in both forms.
    # Who asks for a name: the short answer is the one the shown answer gives, as the
    # evidence has it, in both forms; the quote of the honey sentence names no one.
    assert done["short_answer"] == whole["short_answer"] == short
    span = done["short_answer_span"]
    assert span == whole["short_answer_span"]
    if short is not None:
        quote = done["evidence"][span["quote"]]
        assert quote["text"][span["start"] - quote["start"] : span["end"] - quote["start"]] == (
            short)


def test_error_mid_stream_arrives_as_an_error_event(
    tmp_path: Path, embedder: Any, generator: Any
) -> None:
    # It fails on the word after the first sentence, which has passed and been sent by then.
    service, model = scripted_service(tmp_path, embedder, generator, fail_after=7)
    model.answer = PASSES
    with serving(service) as client:
        events = parse_sse(client.post("/v1/ask", json={"question": BEES, "stream": True}).text)
        assert [(e.event, e.data) for e in events[:-1]] == [("token", ODUYA)]
        assert events[-1].event == "error"
        error = events[-1].json()
        assert error["error"] == "NotReady" and "went away" in error["message"]
        assert error["hint"] == "Try again later."
        # As JSON the same failure is a plain 503, and nothing was cached.
        plain = client.post("/v1/ask", json={"question": BEES})
        assert plain.status_code == 503 and plain.json()["error"] == "NotReady"
    assert model.runs == 2
    service.close()


class BusyServer(BaseHTTPRequestHandler):
    """An OpenAI-compatible server that is always busy: 429 with its own Retry-After."""

    asked = 0

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        type(self).asked += 1
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(429)
        self.send_header("Retry-After", "17")
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"error": {"message": "slow down"}}')

    def log_message(self, format: str, *args: Any) -> None:
        """Keep test output quiet."""


def test_a_busy_generation_servers_retry_after_reaches_the_client(
    tmp_path: Path, embedder: Any, models_dir: Path
) -> None:
    busy = ThreadingHTTPServer(("127.0.0.1", 0), BusyServer)
    threading.Thread(target=busy.serve_forever, daemon=True).start()
    settings = Settings(data_dir=tmp_path / "data", converted_models_dir=models_dir,
                        generator_backend="openai", max_new_tokens=16,
                        openai_base_url=f"http://127.0.0.1:{busy.server_address[1]}/v1")
    service = RagService(settings, embedder=embedder)
    try:
        service.load()
        ingest_corpus(service, tmp_path / "corpus")
        with serving(service) as client:
            response = client.post("/v1/ask", json={"question": BEES})
            assert response.status_code == 503, response.text
            assert response.headers["Retry-After"] == "17"
            assert response.json()["error"] == "Overloaded" and "17 s" in response.json()["hint"]
            # Refused before the first token: a stream is the same 503, not a 200 with an error.
            streamed = client.post("/v1/ask", json={"question": BEES, "stream": True})
            assert streamed.status_code == 503 and streamed.headers["Retry-After"] == "17"
        assert BusyServer.asked == 2
    finally:
        service.close()
        busy.shutdown()
        busy.server_close()


def test_health_answers_while_generating_and_a_disconnect_stops_generation(
    tmp_path: Path, embedder: Any, generator: Any
) -> None:
    service, spy = spied_service(tmp_path, embedder, generator, max_new_tokens=96, cache_size=0,
                                 stop_at_paragraph=False, unsupported_answer="flag",
                                 answer_context="chunks")
    full = service.asking.ask(AskRequest(LONG))
    assert full.usage.completion_tokens >= 48, "pick a question with a longer answer"
    uninterrupted = spy.runs[-1].pieces

    app = create_app(app_settings(service), service=service)
    with live_server(app) as base, httpx.Client(base_url=base, timeout=60) as client:
        with client.stream("POST", "/v1/ask", json={"question": LONG, "stream": True}) as answer:
            lines = answer.iter_lines()
            assert next(line for line in lines if line.startswith("event:")) == "event: token"
            run = spy.runs[-1]
            for _ in range(5):
                started = time.perf_counter()
                assert client.get("/health").json() == {"status": "ok"}
                assert time.perf_counter() - started < 1.0
            assert not run.finished.is_set(), "the answer finished before /health was asked"
        # Leaving the block closed the connection mid-answer.
        assert run.finished.wait(timeout=20), "generation went on after the client left"
        assert run.stop is not None and run.stop.is_set()
        assert run.pieces < uninterrupted


def test_concurrent_asks_share_the_model_safely(corpus_service: RagService) -> None:
    questions = [BEES, TRAIN, "At what time is the highest tide in Port Vell?"]
    corpus_service.cache.clear()
    alone = [corpus_service.asking.ask(AskRequest(q)).text for q in questions]
    corpus_service.cache.clear()
    app = create_app(app_settings(corpus_service), service=corpus_service)
    with live_server(app) as base, httpx.Client(base_url=base, timeout=120) as client:

        def ask(question: str, stream: bool) -> str:
            response = client.post("/v1/ask", json={"question": question, "stream": stream})
            assert response.status_code == 200, response.text
            if not stream:
                assert response.json()["cached"] is False
                return str(response.json()["answer"])
            return str(parse_sse(response.text)[-1].json()["answer"])

        with ThreadPoolExecutor(3) as pool:
            together = list(pool.map(ask, questions, [False, True, False]))
    assert together == alone
