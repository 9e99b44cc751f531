"""The engine process (the default home of the local model): the same answers as in a thread,
failures that stay with their request, a child that dies and comes back, a clean close."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from rag.errors import ConfigError, NotReady
from rag.generation.base import generate
from rag.generation.local import LocalGenerator
from rag.generation.runtime.engine import EngineOptions
from rag.generation.runtime.process import EngineProcess
from rag.generation.runtime.scheduler import Request
from rag.settings import Settings
from tests.rag.generation.test_generation import make_prompt, slot_freed, story_prompt

pytestmark = pytest.mark.slow

QUESTIONS = ("How long does the battery last?", "What is the warranty?",
             "Write a very long story about a vacuum cleaner.")


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Settings:
    return Settings(data_dir=tmp_path_factory.mktemp("engine-data"),
                    converted_models_dir=models_dir)


@pytest.fixture()
def own(settings: Settings, generator: LocalGenerator) -> Iterator[LocalGenerator]:
    """A generator with an engine process of its own, to kill or close without harm."""
    made = LocalGenerator(settings)
    made.load()
    yield made
    made.close()


def pid_of(generator: LocalGenerator) -> int:
    engine = generator.engine
    assert isinstance(engine, EngineProcess) and engine.pid is not None
    return engine.pid


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_the_process_answers_as_a_thread_of_this_process_does(
    generator: LocalGenerator, settings: Settings
) -> None:
    """Same greedy text from the engine process (skinny layers, spinning threads) as from the
    stock layers in a thread here, asked one at a time and all at once."""
    in_thread = LocalGenerator(settings.model_copy(update={"generator_in_process": True}))
    in_thread.load()
    try:
        assert in_thread.engine.info["runs_in"] == "thread"
        assert generator.engine.info["runs_in"] == "process"
        prompts = [make_prompt(generator, q, 24) for q in QUESTIONS]
        expected = [generate(in_thread, p, 24).text for p in prompts]
        assert [generate(generator, p, 24).text for p in prompts] == expected
        together: dict[int, str] = {}
        threads = [threading.Thread(target=lambda i=i, p=p: together.__setitem__(
            i, generate(generator, p, 24).text)) for i, p in enumerate(prompts)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        # batching changes float sums, not (here) the greedy answer's start
        assert [together[i][:20] for i in range(len(prompts))] == [e[:20] for e in expected]
    finally:
        in_thread.close()


def test_a_failing_consumer_fails_alone(own: LocalGenerator) -> None:
    engine = own.engine
    ids = list(story_prompt(own).input_ids)
    failed: list[Exception | None] = []
    ended = threading.Event()

    def explode(token: int) -> None:
        raise RuntimeError("the consumer broke")

    def finish(error: Exception | None) -> None:
        failed.append(error)
        ended.set()

    healthy = own.stream(make_prompt(own, QUESTIONS[0], 16), 16)
    engine.submit(Request(ids=ids, max_new_tokens=64, emit=explode, finish=finish))
    assert ended.wait(60)
    assert isinstance(failed[0], RuntimeError) and len(failed) == 1
    assert "".join(healthy)
    assert generate(own, make_prompt(own, QUESTIONS[1], 8), 8).text  # and it goes on
    assert slot_freed(own)


def test_a_killed_engine_fails_its_requests_and_the_next_one_starts_it_again(
    own: LocalGenerator,
) -> None:
    first = pid_of(own)
    stream = own.stream(story_prompt(own), 200)
    assert next(stream)
    os.kill(first, signal.SIGKILL)
    with pytest.raises(NotReady, match="stopped"):
        list(stream)
    answer = generate(own, make_prompt(own, QUESTIONS[0], 8), 8)
    assert answer.text and answer.completion_tokens <= 8
    assert pid_of(own) != first and not alive(first)


def test_close_ends_the_engine_process(settings: Settings, generator: LocalGenerator) -> None:
    made = LocalGenerator(settings)
    made.load()
    pid = pid_of(made)
    stream = made.stream(story_prompt(made), 200)
    assert next(stream)
    made.close()
    deadline = time.monotonic() + 15
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(pid)
    list(stream)  # the unfinished answer ends rather than hangs


def test_a_model_the_engine_cannot_load_is_a_config_error(tmp_path: Path) -> None:
    options = EngineOptions(model_dir=str(tmp_path), device="cpu", dtype="auto", skinny="auto",
                            max_batch=2, max_waiting=2, prefill_chunk=64, temperature=0.0,
                            prefix_cache_tokens=0)
    engine = EngineProcess(options)
    with pytest.raises(ConfigError, match="Could not load the generator"):
        engine.start()
    assert engine.pid is None
