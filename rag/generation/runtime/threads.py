"""How many OpenMP threads the engine's steps use: all of them, unless other processes keep
the cores busy.

In the engine process the model's OpenMP team spins between the ~200 small products of a step
(`process.py`), the fastest way on an otherwise idle machine. When other processes keep
the cores busy (an ingestion worker embedding, another service), a team whose second thread is
descheduled waits at every one of those barriers. Measured on 2 cores with another process busy
on both: 230-283 ms a token on two spinning threads (single steps of 1-2 s) against 69 ms on
one; 35-44 against 59 ms when the machine is otherwise idle. Trying both and timing them costs
those long steps, so `ThreadChooser` looks at what the rest of the machine uses instead.

`torch.set_num_threads` would change every thread's default; `set_own_threads` sets the calling
thread's count alone, through torch's own OpenMP runtime.
"""

from __future__ import annotations

import ctypes
import logging
import os
import time
from functools import cache
from pathlib import Path

import torch

log = logging.getLogger(__name__)


@cache
def _openmp() -> ctypes.CDLL | None:
    """torch's OpenMP runtime (libgomp in the Linux wheels), or None where it is not found."""
    folder = Path(torch.__file__).parent / "lib"
    for path in [*sorted(folder.glob("libgomp*.so*")), *sorted(folder.glob("libiomp*.so*"))]:
        try:
            return ctypes.CDLL(str(path))
        except OSError:
            continue
    return None


def set_own_threads(count: int) -> bool:
    """Run the calling thread's torch work on `count` OpenMP threads (other threads keep
    theirs); False where torch's OpenMP runtime is not found and nothing changed."""
    runtime = _openmp()
    if runtime is None:
        return False
    runtime.omp_set_num_threads(max(1, count))
    return True


class ThreadChooser:
    """All threads while other processes leave the cores idle, one while they keep them busy.

    Every `period_s` it reads how much CPU the rest of the machine used since the last look
    (/proc/stat less this process's own time); more than `busy_cpus` means one thread. Where
    /proc is not there, or torch's OpenMP runtime is not found, nothing changes.
    """

    def __init__(self, all_threads: int, period_s: float = 0.25, busy_cpus: float = 0.5) -> None:
        self.all_threads = all_threads
        self.period_s = period_s
        self.busy_cpus = busy_cpus
        self.threads = all_threads
        self._cpus = os.cpu_count() or 1
        self._checked = 0.0
        self._last = _cpu_ticks()
        self._working = all_threads > 1 and self._last is not None

    def pick(self) -> int:
        """The thread count for the next step (set for the calling thread when it changes)."""
        now = time.monotonic()
        if not self._working or now - self._checked < self.period_s:
            return self.threads
        self._checked = now
        others = self._others_busy()
        wanted = 1 if others is not None and others > self.busy_cpus else self.all_threads
        if wanted != self.threads:
            if not set_own_threads(wanted):
                self._working = False
                return self.threads
            log.info("other processes keep %.1f CPUs busy: decoding on %d thread(s)",
                     others or 0.0, wanted)
            self.threads = wanted
        return self.threads

    def _others_busy(self) -> float | None:
        """CPUs the rest of the machine kept busy since the last look."""
        now = _cpu_ticks()
        if now is None or self._last is None:
            return None
        (total, busy, own), (total0, busy0, own0) = now, self._last
        self._last = now
        elapsed_per_cpu = (total - total0) / self._cpus
        if elapsed_per_cpu <= 0:
            return None
        return max(0.0, (busy - busy0) - (own - own0)) / elapsed_per_cpu


def _cpu_ticks() -> tuple[int, int, int] | None:
    """(all CPUs' ticks, their busy ticks, this process's ticks) from /proc, or None."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        own = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, ValueError, IndexError):
        return None
    total = sum(fields[:8])  # user nice system idle iowait irq softirq steal
    busy = total - fields[3] - fields[4]
    return total, busy, int(own[11]) + int(own[12])  # utime, stime
