"""The OpenAI-compatible backend against real servers started here: `transformers serve` on the
converted packaged model (always), and llama-cpp-python's server on the packaged GGUF (marker
`llama_cpp`; it runs where `llama-cpp-python[server]` is installed, see the README)."""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from rag.errors import ConfigError, NotReady
from rag.generation.base import generate
from rag.generation.local import LocalGenerator
from rag.generation.model_files import resolve_model
from rag.generation.openai import OpenAIGenerator
from rag.settings import Settings
from tests.rag.generation.test_generation import make_prompt, story_prompt

pytestmark = pytest.mark.slow

QUESTION = "How long does the battery last?"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def wait_healthy(url: str, server: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"the server exited ({server.returncode}):\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    pytest.fail(f"the server did not come up:\n{log.read_text()[-3000:]}")


def command(kind: str, model_dir: Path, port: int) -> list[str]:
    if kind == "transformers":
        return [str(Path(sys.executable).with_name("transformers")), "serve", str(model_dir),
                "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"]
    gguf = resolve_model(Settings())  # the packaged GGUF itself: llama.cpp reads it as it is
    return [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host",
            "127.0.0.1", "--port", str(port), "--n_ctx", "2048"]


@pytest.fixture(scope="module", params=[
    "transformers",
    pytest.param("llama.cpp", marks=[pytest.mark.llama_cpp, pytest.mark.skipif(
        importlib.util.find_spec("llama_cpp") is None,
        reason="llama-cpp-python[server] is not installed (README: its server test)")]),
])
def server(request: pytest.FixtureRequest, generator: LocalGenerator,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """(kind, base URL) of a real OpenAI-compatible server on this machine."""
    assert generator.model_dir is not None
    port = free_port()
    log = tmp_path_factory.mktemp("server") / "server.log"
    with log.open("wb") as out:
        started = subprocess.Popen(command(request.param, generator.model_dir, port),
                                   stdout=out, stderr=subprocess.STDOUT,
                                   env=os.environ | {"HF_HUB_OFFLINE": "1"})
    try:
        wait_healthy(f"http://127.0.0.1:{port}/" + (
            "health" if request.param == "transformers" else "v1/models"), started, log)
        yield request.param, f"http://127.0.0.1:{port}/v1"
    finally:
        started.terminate()
        try:
            started.wait(20)
        except subprocess.TimeoutExpired:
            started.kill()


def client(generator: LocalGenerator, url: str, **update: object) -> OpenAIGenerator:
    assert generator.model_dir is not None
    settings = Settings(generator_backend="openai", openai_base_url=url,
                        generator_model=str(generator.model_dir), **update)  # type: ignore[arg-type]
    made = OpenAIGenerator(settings)
    made.load()
    return made


def test_a_real_server_streams_an_answer_with_its_usage(
    server: tuple[str, str], generator: LocalGenerator
) -> None:
    kind, url = server
    remote = client(generator, url)
    prompt = make_prompt(remote, QUESTION, 24)
    stream = remote.stream(prompt, 24)
    pieces = list(stream)
    text = "".join(pieces)
    assert len(pieces) > 1 and text.strip()
    usage = stream.usage
    assert 0 < usage.completion_tokens <= 24
    assert abs(usage.prompt_tokens - len(prompt.input_ids)) <= 2  # the server's own count
    if kind == "transformers":  # the same weights, greedy: the same answer as our engine's
        assert text == generate(generator, prompt, 24).text
    remote.close()


def test_a_real_server_respects_the_token_limit_and_the_stop_event(
    server: tuple[str, str], generator: LocalGenerator
) -> None:
    remote = client(generator, server[1])
    assert generate(remote, story_prompt(remote), 8).completion_tokens == 8
    stop = threading.Event()
    started = time.perf_counter()
    stream = remote.stream(story_prompt(remote), 200, stop)
    assert next(stream)
    stop.set()
    rest = list(stream)
    assert len(rest) <= 2 and time.perf_counter() - started < 30
    remote.close()


def test_a_real_server_refusing_the_request_is_a_config_error(
    server: tuple[str, str], generator: LocalGenerator
) -> None:
    wrong = server[1].removesuffix("/v1") + "/v9"  # a path the server does not have: 404
    remote = client(generator, wrong)
    with pytest.raises(ConfigError, match="404"):
        generate(remote, make_prompt(remote, QUESTION, 8), 8)
    remote.close()


def test_a_server_that_never_answers_times_out_as_not_ready(generator: LocalGenerator) -> None:
    with socket.socket() as silent:  # accepts connections, never says a word
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/v1"
        remote = client(generator, url, openai_timeout_s=1.0)
        started = time.perf_counter()
        with pytest.raises(NotReady, match="timed out"):
            generate(remote, make_prompt(remote, QUESTION, 8), 8)
        assert time.perf_counter() - started < 10
        remote.close()


def test_a_server_gone_away_is_not_ready(generator: LocalGenerator,
                                         tmp_path: Path) -> None:
    assert generator.model_dir is not None
    port = free_port()
    log = tmp_path / "server.log"
    with log.open("wb") as out:
        started = subprocess.Popen(command("transformers", generator.model_dir, port),
                                   stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_healthy(f"http://127.0.0.1:{port}/health", started, log)
        remote = client(generator, f"http://127.0.0.1:{port}/v1")
        assert generate(remote, make_prompt(remote, QUESTION, 4), 4).text
    finally:
        started.kill()
        started.wait()
    with pytest.raises(NotReady, match=str(port)):
        generate(remote, make_prompt(remote, QUESTION, 4), 4)
    remote.close()
