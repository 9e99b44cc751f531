"""The engine's thread count follows the machine's load: all threads while the rest of the
machine is idle, one while other processes keep the cores busy."""

from __future__ import annotations

import threading

import pytest
import torch

import rag.generation.runtime.threads as threads
from rag.generation.runtime.threads import ThreadChooser, set_own_threads


def test_the_callers_thread_count_changes_alone() -> None:
    seen: list[int] = []

    def other() -> None:
        assert set_own_threads(1)
        seen.append(torch.get_num_threads())

    before = torch.get_num_threads()
    worker = threading.Thread(target=other)
    worker.start()
    worker.join()
    assert seen == [1] and torch.get_num_threads() == before


def test_one_thread_while_others_are_busy_all_when_they_stop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ticks = {"total": 0, "busy": 0, "own": 0}
    monkeypatch.setattr(threads, "_cpu_ticks",
                        lambda: (ticks["total"], ticks["busy"], ticks["own"]))
    monkeypatch.setattr(threads.os, "cpu_count", lambda: 2)
    applied: list[int] = []
    monkeypatch.setattr(threads, "set_own_threads", lambda n: applied.append(n) or True)
    chooser = ThreadChooser(2, period_s=0.0)

    def elapse(own: int, others: int) -> int:
        """100 ticks a CPU pass; this process and the others keep CPUs busy as given."""
        ticks["total"] += 200
        ticks["own"] += own
        ticks["busy"] += own + others
        return chooser.pick()

    assert elapse(own=190, others=5) == 2  # only we are busy
    assert elapse(own=100, others=90) == 1  # another process takes most of a core
    assert elapse(own=150, others=60) == 1
    assert elapse(own=190, others=10) == 2  # it stopped
    assert applied == [1, 2]


def test_without_proc_nothing_changes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(threads, "_cpu_ticks", lambda: None)
    chooser = ThreadChooser(2, period_s=0.0)
    assert chooser.pick() == 2 and chooser.pick() == 2


def test_the_proc_reading_is_sane() -> None:
    reading = threads._cpu_ticks()
    assert reading is not None  # Linux
    total, busy, own = reading
    assert total >= busy >= 0 and own >= 0
