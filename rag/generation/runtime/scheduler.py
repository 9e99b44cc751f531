"""Continuous batching for the local generator: one thread owns the model and runs decode
steps over every active request at once.

A request joins the running batch at a step boundary, after its prompt is prefilled in chunks
(`prefill_chunk` tokens between two decode steps, so a newcomer stalls the others by one chunk,
not by its whole prompt), reusing the KV of the longest cached prompt prefix. It leaves at the
step where it ends: EOS, its token limit, a token loop, its `stop` event or its consumer going
away. A request that fails fails alone; a bounded queue in front refuses work past its size.
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedModel

from rag.errors import Overloaded
from rag.generation.runtime.kv_cache import (
    PrefixCache,
    cache_from,
    join_rows,
    keep_rows,
    new_cache,
    snapshot,
    truncate,
)
from rag.generation.runtime.threads import ThreadChooser
from rag.generation.stopping import token_loop

log = logging.getLogger(__name__)

# Schedulers still running at interpreter exit are stopped first: a thread torch still knows
# about when the process tears its thread pools down aborts it ("terminate called...").
_RUNNING: weakref.WeakSet[StepScheduler] = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    for scheduler in list(_RUNNING):
        scheduler.close()


def overloaded(waiting: int, retry_after_s: int) -> Overloaded:
    """The error for a full queue: the API answers it 503 with Retry-After."""
    return Overloaded(f"The generator is busy: {waiting} requests are waiting.",
                      f"Retry in {retry_after_s} s.", retry_after_s=retry_after_s)


def lookup_draft(context: Sequence[int], longest: int = 3, shortest: int = 2) -> int | None:
    """The token that followed the latest earlier occurrence of the context's last n tokens
    (n from `longest` down to `shortest`), or None: prompt-lookup decoding's draft. Answers
    copy from their sources, so the draft is often right: on the shipped suite's 30 answerable
    prompts 72% of drafts were, and a token took 26.0 ms instead of 34.5."""
    tokens = np.asarray(context, dtype=np.int64)
    ends = np.flatnonzero(tokens[:-1] == tokens[-1])[::-1]  # earlier places of the last token
    for n in range(longest, shortest - 1, -1):
        tail = tokens[-n:]
        for end in ends:
            if end + 1 >= n and np.array_equal(tokens[end + 1 - n : end + 1], tail):
                return int(tokens[end + 1])
    return None


@dataclass(eq=False)
class Request:
    """One generation: the prompt ids in, tokens out through `emit`, then `finish` once."""

    ids: list[int]
    max_new_tokens: int
    emit: Callable[[int], None]
    finish: Callable[[Exception | None], None]
    stop: threading.Event | None = None
    abandoned: threading.Event = field(default_factory=threading.Event)
    generated: list[int] = field(default_factory=list)
    submitted: float = field(default_factory=time.perf_counter)
    reused: int = 0  # prompt tokens whose KV came from the prefix cache

    def cancelled(self) -> bool:
        return self.abandoned.is_set() or (self.stop is not None and self.stop.is_set())


@dataclass
class _Prefill:
    request: Request
    cache: Any
    done: int  # prompt tokens in `cache`


@dataclass
class SchedulerStats:
    waiting: int = 0
    running: int = 0
    steps: int = 0
    tokens: int = 0
    rejected: int = 0
    failed: int = 0
    drafted: int = 0  # prompt-lookup drafts checked
    accepted: int = 0  # and found right


class StepScheduler:
    """Runs requests on `model` in one background thread; `submit` never blocks on the model."""

    def __init__(self, model: PreTrainedModel, eos_ids: set[int], *, max_batch: int = 8,
                 max_waiting: int = 32, prefill_chunk: int = 128, temperature: float = 0.0,
                 prefix_cache: PrefixCache | None = None, retry_after_s: int = 2,
                 prompt_lookup: bool = False, threads: ThreadChooser | None = None,
                 start: bool = True) -> None:
        """With `start` False no thread is started: the caller runs `run()` in its own."""
        self.model = model
        self.eos_ids = eos_ids
        self.max_batch = max_batch
        self.max_waiting = max_waiting
        self.prefill_chunk = prefill_chunk
        self.temperature = temperature
        self.prefix_cache = prefix_cache
        self.retry_after_s = retry_after_s
        self.prompt_lookup = prompt_lookup
        self.threads = threads  # picks the OpenMP thread count as the machine's load changes
        self.stats = SchedulerStats()
        self._waiting: deque[Request] = deque()
        self._prefilling: _Prefill | None = None
        self._rows: list[Request] = []
        self._cache: Any = None
        self._mask: torch.Tensor | None = None  # (rows, columns): 1 where a row has a token
        self._next: torch.Tensor | None = None  # (rows, 1): each row's last token, not yet fed
        self._positions: torch.Tensor | None = None  # (rows, 1): its position id
        self._wake = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None
        if start:
            self._thread = threading.Thread(target=self.run, name="rag-scheduler", daemon=True)
            self._thread.start()
        _RUNNING.add(self)

    def submit(self, request: Request) -> None:
        """Queue `request`; raises `Overloaded` when `max_waiting` requests already wait."""
        with self._wake:
            if len(self._waiting) >= self.max_waiting:
                self.stats.rejected += 1
                raise overloaded(len(self._waiting), self.retry_after_s)
            self._waiting.append(request)
            self.stats.waiting = len(self._waiting)
            self._wake.notify()

    def close(self) -> None:
        with self._wake:
            self._closed = True
            self._wake.notify()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)
        _RUNNING.discard(self)

    def figures(self) -> dict[str, float]:
        """Scheduling and prefix-cache figures for /metrics."""
        figures: dict[str, float] = dict(vars(self.stats))
        if self.prefix_cache is not None:
            figures.update({f"prefix_{k}": v for k, v in vars(self.prefix_cache.stats).items()})
        return figures

    def clear_prefix_cache(self) -> None:
        if self.prefix_cache is not None:
            self.prefix_cache.clear()

    # --- the scheduler thread ---------------------------------------------------------------

    def run(self) -> None:
        """The scheduling loop, until `close`: the scheduler's own thread runs it, or the
        caller's (`start=False`)."""
        while True:
            with self._wake:
                while not (self._closed or self._waiting or self._rows or self._prefilling):
                    self._wake.wait()
                if self._closed:
                    break
            if self.threads is not None:
                self.threads.pick()
            with torch.inference_mode():
                self._admit()
                self._step()
        prefilling = [self._prefilling.request] if self._prefilling is not None else []
        for request in [*prefilling, *self._rows, *self._waiting]:
            request.finish(None)

    def _admit(self) -> None:
        """Prefill one chunk of the next newcomer, while the batch has room."""
        if self._prefilling is None:
            if len(self._rows) >= self.max_batch:
                return
            with self._wake:
                if not self._waiting:
                    return
                request = self._waiting.popleft()
                self.stats.waiting = len(self._waiting)
            if request.cancelled():
                request.finish(None)
                return
            self._prefilling = self._start_prefill(request)
        job = self._prefilling
        try:
            done = self._prefill_chunk(job)
        except Exception as error:  # this request alone fails (e.g. an id past the vocabulary)
            self._prefilling = None
            self.stats.failed += 1
            log.warning("generation failed in prefill: %s", error)
            job.request.finish(error)
            return
        if done is not None:
            self._prefilling = None
            self._join(job, done)

    def _start_prefill(self, request: Request) -> _Prefill:
        config = self.model.config
        reused, kv = (0, None) if self.prefix_cache is None else self.prefix_cache.lookup(
            request.ids)
        request.reused = reused
        cache = new_cache(config) if kv is None else cache_from(config, kv)
        return _Prefill(request, cache, reused)

    def _prefill_chunk(self, job: _Prefill) -> torch.Tensor | None:
        """Feed the next chunk of the prompt; the last one returns its logits (vocab,)."""
        ids = job.request.ids
        end = min(len(ids), job.done + self.prefill_chunk)
        device = self.model.device
        chunk = torch.tensor([ids[job.done:end]], device=device)  # (1, chunk)
        out = self.model(
            input_ids=chunk,
            attention_mask=torch.ones((1, end), dtype=torch.long, device=device),
            position_ids=torch.arange(job.done, end, device=device).unsqueeze(0),
            past_key_values=job.cache, use_cache=True, logits_to_keep=1)
        job.done = end
        return out.logits[0, -1] if end == len(ids) else None

    def _join(self, job: _Prefill, logits: torch.Tensor) -> None:
        request = job.request
        if self.prefix_cache is not None:
            self.prefix_cache.store(request.ids, snapshot(job.cache, len(request.ids)))
        token = int(self._pick(logits.unsqueeze(0))[0])
        if not self._accept(request, token):
            return
        self._cache, self._mask = join_rows(self.model.config, self._cache, self._mask, job.cache)
        device = self.model.device
        row_next = torch.tensor([[token]], device=device)
        row_pos = torch.tensor([[len(request.ids)]], device=device)
        if self._next is None or self._positions is None:
            self._next, self._positions = row_next, row_pos
        else:
            self._next = torch.cat([self._next, row_next])
            self._positions = torch.cat([self._positions, row_pos])
        self._rows.append(request)
        self.stats.running = len(self._rows)

    def _step(self) -> None:
        """One decode step over every row; rows that end leave the batch. A lone greedy row
        also feeds a drafted next token, checked in the same forward (prompt lookup)."""
        if not self._rows:
            return
        assert self._mask is not None and self._next is not None and self._positions is not None
        draft = self._draft()
        fed, positions = self._next, self._positions  # (rows, 1) each
        if draft is not None:  # (1, 2): the pending token and the draft after it
            fed = torch.cat([fed, fed.new_tensor([[draft]])], dim=1)
            positions = torch.cat([positions, positions + 1], dim=1)
        self._mask = torch.cat([self._mask, self._mask.new_ones(fed.shape)], dim=1)
        try:
            out = self.model(input_ids=fed, attention_mask=self._mask, position_ids=positions,
                             past_key_values=self._cache, use_cache=True)
        except Exception as error:  # the whole batch is lost; each request says why
            log.exception("decode step failed for %d requests", len(self._rows))
            self.stats.failed += len(self._rows)
            for request in self._rows:
                request.finish(error)
            self._reset_batch()
            return
        self.stats.steps += 1
        if draft is not None:
            self._check_draft(out.logits[0], draft)
            return
        tokens = self._pick(out.logits[:, -1]).tolist()  # one per row
        keep = [i for i, (request, token) in enumerate(zip(self._rows, tokens, strict=True))
                if self._accept(request, token)]
        self._next = torch.tensor([[t] for t in tokens], device=self._next.device)
        self._positions = self._positions + 1
        if len(keep) < len(self._rows):
            self._leave(keep)

    def _draft(self) -> int | None:
        """A draft for a lone greedy row, where prompt lookup finds one."""
        if not self.prompt_lookup or len(self._rows) != 1 or self.temperature > 0:
            return None
        request = self._rows[0]
        return lookup_draft([*request.ids, *request.generated])

    def _check_draft(self, logits: torch.Tensor, draft: int) -> None:
        """The lone row fed its pending token and `draft`; logits (2, vocab) predict what
        follows each. A right draft yields two tokens in one step; a wrong one is forgotten."""
        request = self._rows[0]
        first, second = self._pick(logits).tolist()
        self.stats.drafted += 1
        right = first == draft
        if not right:  # the draft's column holds a wrong token's KV: drop it
            assert self._mask is not None
            truncate(self._cache, self._mask.shape[1] - 1)
            self._mask = self._mask[:, :-1]
        going = self._accept(request, first)
        if going and right:
            self.stats.accepted += 1
            going = self._accept(request, second)
        if not going:
            self._reset_batch()
            return
        assert self._next is not None and self._positions is not None
        self._next = self._next.new_tensor([[second if right else first]])
        self._positions = self._positions + (2 if right else 1)

    def _accept(self, request: Request, token: int) -> bool:
        """Hand `token` to the request; False (and the request finished) when it ends here."""
        try:
            if request.cancelled():
                request.finish(None)
                return False
            if token in self.eos_ids:
                request.finish(None)
                return False
            request.generated.append(token)
            self.stats.tokens += 1
            request.emit(token)
            if len(request.generated) >= request.max_new_tokens or token_loop(request.generated):
                request.finish(None)
                return False
        except Exception as error:  # a consumer-side failure ends this request only
            self.stats.failed += 1
            log.warning("generation failed for one request: %s", error)
            request.finish(error)
            return False
        return True

    def _leave(self, keep: list[int]) -> None:
        if not keep:
            self._reset_batch()
            return
        assert self._mask is not None and self._next is not None and self._positions is not None
        self._cache, self._mask = keep_rows(self.model.config, self._cache, self._mask, keep)
        index = torch.tensor(keep, device=self._next.device)
        self._next, self._positions = self._next[index], self._positions[index]
        self._rows = [self._rows[i] for i in keep]
        self.stats.running = len(self._rows)

    def _reset_batch(self) -> None:
        self._rows, self._cache, self._mask = [], None, None
        self._next = self._positions = None
        self.stats.running = 0

    def _pick(self, logits: torch.Tensor) -> torch.Tensor:
        """Next token per row: greedy at temperature 0, else sampled. logits: (rows, vocab)."""
        if self.temperature <= 0:
            return logits.argmax(dim=-1)
        probs = torch.softmax(logits.float() / self.temperature, dim=-1)
        return torch.multinomial(probs, 1).squeeze(-1)
