"""The step scheduler on the packaged model: requests join and leave the running batch, cancel,
fail alone, are refused past the queue bound, and reuse cached prompt prefixes."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
import torch
from transformers import PreTrainedModel

from rag.errors import InvalidInput, Overloaded
from rag.generation.local import LocalGenerator
from rag.generation.runtime.kv_cache import PrefixCache
from rag.generation.runtime.scheduler import Request, StepScheduler, lookup_draft
from rag.types import Prompt
from tests.rag.generation.test_generation import make_prompt

pytestmark = pytest.mark.slow


@dataclass
class Outcome:
    """What one request received, filled in by the scheduler thread."""

    tokens: list[int] = field(default_factory=list)
    error: Exception | None = None
    done: threading.Event = field(default_factory=threading.Event)
    peak_batch: int = 0


def request(ids: list[int], max_new_tokens: int, outcome: Outcome,
            scheduler: StepScheduler | None = None, **kwargs: object) -> Request:
    def emit(token: int) -> None:
        outcome.tokens.append(token)
        if scheduler is not None:
            outcome.peak_batch = max(outcome.peak_batch, scheduler.stats.running)

    def finish(error: Exception | None) -> None:
        outcome.error = error
        outcome.done.set()

    return Request(ids=ids, max_new_tokens=max_new_tokens, emit=emit, finish=finish,
                   **kwargs)  # type: ignore[arg-type]


def wait(*outcomes: Outcome) -> None:
    for outcome in outcomes:
        assert outcome.done.wait(120), "the request never finished"


@pytest.fixture()
def prompts(generator: LocalGenerator) -> tuple[Prompt, Prompt]:
    return (make_prompt(generator, "How long does the battery last?", 64),
            make_prompt(generator, "Write a very long story about a vacuum cleaner.", 64))


@pytest.fixture()
def scheduler(plain_model: PreTrainedModel) -> Iterator[StepScheduler]:
    """A scheduler of its own over the session's model (no prefix cache unless a test adds)."""
    eos = plain_model.generation_config.eos_token_id
    made = StepScheduler(plain_model, {eos} if isinstance(eos, int) else set(eos or []),
                         max_batch=4, max_waiting=2, prefill_chunk=32)
    yield made
    made.close()


def alone(scheduler: StepScheduler, ids: list[int], max_new_tokens: int) -> list[int]:
    outcome = Outcome()
    scheduler.submit(request(ids, max_new_tokens, outcome))
    wait(outcome)
    assert outcome.error is None
    return outcome.tokens


def test_requests_join_a_running_batch_and_leave_it_at_their_own_end(
    scheduler: StepScheduler, prompts: tuple[Prompt, Prompt]
) -> None:
    short_ids, long_ids = list(prompts[0].input_ids), list(prompts[1].input_ids)
    long_alone = alone(scheduler, long_ids, 24)
    short_alone = alone(scheduler, short_ids, 6)
    first, second = Outcome(), Outcome()
    scheduler.submit(request(long_ids, 24, first, scheduler))
    while len(first.tokens) < 3:  # the long one is decoding when the short one arrives
        time.sleep(0.01)
    scheduler.submit(request(short_ids, 6, second, scheduler))
    wait(first, second)
    assert first.error is None and second.error is None
    assert second.peak_batch == 2  # decoded together
    assert len(second.tokens) <= 6 and len(first.tokens) <= 24
    # Batching changes the order of float sums, never what a prompt's first tokens are.
    assert first.tokens[:3] == long_alone[:3] and second.tokens[:3] == short_alone[:3]
    # a request is told it is done inside the step that drops it from the batch
    deadline = time.monotonic() + 10
    while scheduler.stats.running and time.monotonic() < deadline:
        time.sleep(0.01)
    assert scheduler.stats.running == 0


def test_a_cancelled_request_leaves_within_one_step(
    scheduler: StepScheduler, prompts: tuple[Prompt, Prompt]
) -> None:
    ids = list(prompts[1].input_ids)
    stop = threading.Event()
    cancelled, other = Outcome(), Outcome()

    def emit(token: int) -> None:
        cancelled.tokens.append(token)
        if len(cancelled.tokens) == 3:
            stop.set()

    def finish(error: Exception | None) -> None:
        cancelled.error = error
        cancelled.done.set()

    scheduler.submit(Request(ids=ids, max_new_tokens=40, emit=emit, finish=finish, stop=stop))
    scheduler.submit(request(ids, 12, other))
    wait(cancelled, other)
    assert len(cancelled.tokens) == 3 and cancelled.error is None
    assert len(other.tokens) > 3 and other.error is None


def test_a_failing_request_fails_alone(
    scheduler: StepScheduler, prompts: tuple[Prompt, Prompt], plain_model: PreTrainedModel
) -> None:
    ids = list(prompts[0].input_ids)
    vocab = plain_model.config.vocab_size
    healthy, bad_prompt, bad_consumer = Outcome(), Outcome(), Outcome()

    def broken(token: int) -> None:
        raise RuntimeError("the consumer broke")

    def finish(error: Exception | None) -> None:
        bad_consumer.error = error
        bad_consumer.done.set()

    scheduler.submit(request(ids, 10, healthy))
    scheduler.submit(request([*ids[:-1], vocab + 5], 10, bad_prompt))  # an id past the vocab
    wait(bad_prompt)
    scheduler.submit(Request(ids=ids, max_new_tokens=10, emit=broken, finish=finish))
    wait(healthy, bad_consumer)
    assert isinstance(bad_prompt.error, IndexError | RuntimeError) and not bad_prompt.tokens
    assert isinstance(bad_consumer.error, RuntimeError)
    assert healthy.error is None and len(healthy.tokens) >= 1
    assert alone(scheduler, ids, 4)  # and the scheduler goes on serving


def test_a_full_queue_refuses_with_a_retry_hint(
    plain_model: PreTrainedModel, prompts: tuple[Prompt, Prompt]
) -> None:
    eos = plain_model.generation_config.eos_token_id
    busy = StepScheduler(plain_model, {eos} if isinstance(eos, int) else set(),
                         max_batch=1, max_waiting=1)
    stop = threading.Event()
    try:
        ids = list(prompts[1].input_ids)
        running, queued = Outcome(), Outcome()
        busy.submit(request(ids, 200, running, stop=stop))
        while not running.tokens:
            time.sleep(0.01)
        busy.submit(request(ids, 4, queued, stop=stop))
        with pytest.raises(Overloaded) as refused:
            busy.submit(request(ids, 4, Outcome()))
        assert refused.value.retry_after_s >= 1 and busy.stats.rejected == 1
        stop.set()
        wait(running, queued)
    finally:
        busy.close()


def test_a_repeated_prompt_reuses_its_cached_prefix(
    scheduler: StepScheduler, prompts: tuple[Prompt, Prompt]
) -> None:
    scheduler.prefix_cache = PrefixCache(max_tokens=4096)
    ids = list(prompts[0].input_ids)
    cold = alone(scheduler, ids, 8)
    assert scheduler.prefix_cache.stats.misses == 1
    warm_request = Outcome()
    submitted = request(ids, 8, warm_request)
    scheduler.submit(submitted)
    wait(warm_request)
    assert submitted.reused == len(ids) - 1  # all but the last token, whose logits it needs
    assert scheduler.prefix_cache.stats.hits == 1
    assert warm_request.tokens == cold and len(cold) == 8  # the same answer, every token
    # Another question after the same sources reuses the shared front.
    other = list(prompts[1].input_ids)
    shared = next(i for i, (a, b) in enumerate(zip(ids, other, strict=False)) if a != b)
    again_outcome = Outcome()
    again = request(other, 4, again_outcome)
    scheduler.submit(again)
    wait(again_outcome)
    assert again.reused == shared and again_outcome.error is None


def test_prompt_lookup_gives_the_same_tokens_in_fewer_steps(
    plain_model: PreTrainedModel, generator: LocalGenerator
) -> None:
    """A lone greedy answer that copies its source: drafts checked in the same step give
    exactly the tokens plain one-token steps give."""
    text = ("The warranty covers the battery for two years and the motor for five years, "
            "as long as the cleaner is registered online within thirty days.")
    ids = list(make_prompt(generator, f"Repeat this sentence exactly: {text}", 48).input_ids)
    eos = plain_model.generation_config.eos_token_id
    runs = {}
    for lookup in (False, True):
        made = StepScheduler(plain_model, {eos} if isinstance(eos, int) else set(eos or []),
                             prompt_lookup=lookup)
        try:
            runs[lookup] = (alone(made, ids, 40), made.stats)
        finally:
            made.close()
    (plain, plain_stats), (drafted, stats) = runs[False], runs[True]
    assert drafted == plain and len(plain) > 10
    assert plain_stats.drafted == 0 and stats.accepted >= 5
    assert stats.steps < plain_stats.steps


def test_lookup_drafts_what_followed_the_latest_earlier_occurrence() -> None:
    assert lookup_draft([5, 6, 7, 9, 5, 6, 8, 1, 5, 6]) == 8  # the latest "5 6" came before 8
    assert lookup_draft([1, 2, 3, 4, 2, 3]) == 4
    assert lookup_draft([1, 2, 3, 4]) is None  # its last tokens never appeared before
    assert lookup_draft([7, 3, 9, 3]) is None  # one token alone is too weak a match
    assert lookup_draft([4, 4]) is None


def test_prefix_cache_is_bounded_by_tokens() -> None:
    cache = PrefixCache(max_tokens=100, min_prefix=2)
    kv = [(torch.zeros(1, 1, 60, 2), torch.zeros(1, 1, 60, 2))]
    cache.store(list(range(60)), kv)
    cache.store(list(range(100, 160)), kv)  # 120 tokens in all: the first is evicted
    assert cache.stats.entries == 1 and cache.stats.tokens == 60
    assert cache.lookup(list(range(10)))[0] == 0
    reused, got = cache.lookup([*range(100, 130), 7])
    assert reused == 30 and got is not None and got[0][0].shape[2] == 30


def test_a_prompt_past_the_window_is_refused_before_it_joins(generator: LocalGenerator) -> None:
    prompt = make_prompt(generator, "How long does the battery last?", 64)
    with pytest.raises(InvalidInput, match="context window"):
        generator.stream(prompt, generator.context_window)
