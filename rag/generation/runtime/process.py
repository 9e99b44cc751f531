"""The local model in a process of its own (the default; `rag.generation.runtime.engine`).

Why a process: a decode step is ~200 small matrix products, each run on torch's OpenMP threads.
In the API process those threads sleep between products: several threads there run torch
(request threads embed queries, the ingest thread embeds chunks) and each gets an OpenMP team;
busy-waiting teams starve each other (`rag/__init__.py` makes them passive), and libgomp stops
spinning anyway once a process has more OpenMP threads than cores. Waking a sleeping thread
~200 times a step costs more than the second core gives. Measured on 2 cores (SmolLM2-135M,
fp32, one row): 57-63 ms a step on two sleeping threads, 42 ms on one thread, 29 ms on two
spinning ones. Here the model is loaded and run from one thread, the process's only OpenMP
team, and that team spins briefly between products (`GOMP_SPINCOUNT`); the decode loop is off
the API's GIL as well. While other processes keep the cores busy, a spinning team is the
slowest way instead, so the steps then run on one thread (`rag.generation.runtime.threads`).

Parent and child exchange pickled tuples over a socket pair:
  parent -> child: ("submit", id, ids, max_new_tokens), ("cancel", id), ("clear", ack),
                   ("figures", ack), ("close",)
  child -> parent: ("ready", info), ("failed", error), ("token", id, token),
                   ("finish", id, error or None), ("ack", ack, payload)
Run as `python -m rag.generation.runtime.process FD`, it is that child.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import logging
import os
import pickle
import subprocess
import sys
import threading
import time
import weakref
from functools import partial
from multiprocessing import Pipe
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from rag.errors import ConfigError, NotReady
from rag.generation.runtime.engine import EngineOptions, describe, make_scheduler
from rag.generation.runtime.scheduler import Request, StepScheduler, overloaded

log = logging.getLogger(__name__)

# OpenMP spin before sleeping, in libgomp's units (~100,000 a millisecond): it bridges the gaps
# between the products of a step and between steps, then the idle team sleeps. Measured on one
# row: 30.0 ms a step at 30,000, 28.9 ms at 300,000.
SPIN_COUNT = "100000"
POLL_S = 0.05  # the parent looks for cancelled requests this often (and at every token)


_PROCESSES: weakref.WeakSet[EngineProcess] = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    for engine in list(_PROCESSES):
        engine.close()


class EngineProcess:
    """The scheduler in a child process; requests, tokens and cancels cross a socket pair.

    If the child dies, its requests fail with NotReady and the next request starts a new one.
    """

    def __init__(self, options: EngineOptions, start_timeout_s: float = 600.0) -> None:
        self.options = options
        self.start_timeout_s = start_timeout_s
        self.max_batch = options.max_batch
        self.max_waiting = options.max_waiting
        self.retry_after_s = 2
        self.info: dict[str, str] = {}
        self.rejected = 0
        self._conn: Connection | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._requests: dict[int, Request] = {}
        self._cancelled: set[int] = set()
        self._acks: dict[int, tuple[threading.Event, list[Any]]] = {}
        self._ids = itertools.count()
        self._lock = threading.Lock()  # the request table and starting
        self._send_lock = threading.Lock()

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def start(self) -> None:
        """Start the child and wait until its model is loaded; ConfigError if it cannot."""
        with self._lock:
            self._start()

    def submit(self, request: Request) -> None:
        with self._lock:
            if self._conn is None:
                log.warning("the generation process is not running; starting it again")
                self._start()
            if len(self._requests) >= self.max_batch + self.max_waiting:
                self.rejected += 1
                raise overloaded(max(0, len(self._requests) - self.max_batch),
                                 self.retry_after_s)
            key = next(self._ids)
            self._requests[key] = request
        self._send(("submit", key, request.ids, request.max_new_tokens))

    def figures(self) -> dict[str, float]:
        figures: dict[str, float] = self._ask("figures") or {}
        return figures | {"rejected": self.rejected + figures.get("rejected", 0)}

    def clear_prefix_cache(self) -> None:
        self._ask("clear")

    def close(self) -> None:
        """Stop the child; requests still running end where they are."""
        process, conn = self._process, self._conn
        if process is None:
            return
        if conn is not None:
            with contextlib.suppress(NotReady):
                self._send(("close",))
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        _PROCESSES.discard(self)

    # --- starting -----------------------------------------------------------------------

    def _start(self) -> None:
        ours, theirs = Pipe()
        env = os.environ | {
            "OMP_WAIT_POLICY": "ACTIVE", "GOMP_SPINCOUNT": SPIN_COUNT,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).parents[1]),
                                                        os.environ.get("PYTHONPATH")]))}
        process = subprocess.Popen(
            [sys.executable, "-m", "rag.generation.runtime.process", str(theirs.fileno())], env=env,
            pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL)
        theirs.close()
        try:
            ours.send(self.options)
            self.info = _await_ready(ours, process, self.start_timeout_s)
        except BaseException:
            process.kill()
            process.wait()
            ours.close()
            raise
        self._conn, self._process = ours, process
        _PROCESSES.add(self)
        threading.Thread(target=self._read, args=(ours, process), name="rag-engine-reader",
                         daemon=True).start()

    # --- talking to the child ---------------------------------------------------------------

    def _send(self, message: tuple[Any, ...]) -> None:
        conn = self._conn
        if conn is None:
            raise NotReady("The generation process is not running.", "Retry in a few seconds.")
        try:
            with self._send_lock:
                conn.send(message)
        except OSError as error:
            raise NotReady(f"The generation process is gone: {error}.",
                           "Retry in a few seconds.") from error

    def _ask(self, what: str, timeout_s: float = 5.0) -> Any:
        """A round trip to the child (None when it is not running or does not answer)."""
        key = next(self._ids)
        done, reply = threading.Event(), list[Any]()
        self._acks[key] = (done, reply)
        try:
            self._send((what, key))
            done.wait(timeout_s)
        except NotReady:
            return None
        finally:
            self._acks.pop(key, None)
        return reply[0] if reply else None

    def _read(self, conn: Connection, process: subprocess.Popen[bytes]) -> None:
        """The reader thread: hands tokens and endings to their requests; sends the cancels of
        requests whose stream was closed or whose stop event was set."""
        try:
            while True:
                if conn.poll(POLL_S):
                    self._dispatch(conn.recv())
                self._send_cancels()
        except (EOFError, OSError):
            self._lost(conn, process)

    def _dispatch(self, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "token":
            request = self._requests.get(message[1])
            if request is not None and not request.cancelled():
                try:
                    request.emit(message[2])
                except Exception as error:  # a consumer-side failure ends this request only
                    log.warning("generation failed for one request: %s", error)
                    self._end_early(message[1], error)
        elif kind == "finish":
            with self._lock:
                request = self._requests.pop(message[1], None)
                self._cancelled.discard(message[1])
            if request is not None:
                request.finish(message[2])
        elif kind == "ack" and message[1] in self._acks:
            done, reply = self._acks[message[1]]
            reply.append(message[2])
            done.set()

    def _end_early(self, key: int, error: Exception) -> None:
        """Finish request `key` here with `error` and cancel it in the child."""
        with self._lock:
            request = self._requests.pop(key, None)
            self._cancelled.discard(key)
        self._send(("cancel", key))
        if request is not None:
            request.finish(error)

    def _send_cancels(self) -> None:
        with self._lock:
            new = [key for key, request in self._requests.items()
                   if key not in self._cancelled and request.cancelled()]
            self._cancelled.update(new)
        for key in new:
            self._send(("cancel", key))

    def _lost(self, conn: Connection, process: subprocess.Popen[bytes]) -> None:
        """The child is gone: its requests fail, the next submit starts another."""
        with self._lock:
            if self._conn is conn:
                self._conn = None
            requests, self._requests = self._requests, {}
            self._cancelled.clear()
        code = process.wait()
        conn.close()
        if requests:
            log.error("the generation process stopped (exit code %s) with %d requests",
                      code, len(requests))
        error = NotReady(f"The generation process stopped (exit code {code}).",
                         "Ask again: the next request starts it again.")
        for request in requests.values():
            request.finish(error)
        for done, _ in list(self._acks.values()):
            done.set()


def _await_ready(conn: Connection, process: subprocess.Popen[bytes], timeout_s: float
                 ) -> dict[str, str]:
    """The child's ("ready", info), or its error raised here."""
    deadline = time.monotonic() + timeout_s
    while not conn.poll(0.2):
        if process.poll() is not None:
            raise ConfigError(
                f"The generation process exited at start (code {process.returncode}).",
                "Its error is in the log above.")
        if time.monotonic() > deadline:
            raise ConfigError(f"The generation process did not load in {timeout_s:.0f} s.",
                              "Check the model and the machine's memory.")
    kind, payload = conn.recv()
    if kind == "failed":
        raise payload
    info: dict[str, str] = payload
    return info


# --- the child ------------------------------------------------------------------------------


class _Child:
    """The engine process: its main thread reads commands; one other thread loads the model
    and runs the scheduler (so the process has a single OpenMP team)."""

    def __init__(self, conn: Connection, options: EngineOptions) -> None:
        self.conn = conn
        self.options = options
        self.scheduler: StepScheduler | None = None
        self.requests: dict[int, Request] = {}
        self.loaded = threading.Event()
        self.send_lock = threading.Lock()

    def serve(self) -> None:
        owner = threading.Thread(target=self._own_model, name="rag-engine", daemon=True)
        owner.start()
        self.loaded.wait()
        if self.scheduler is None:
            return
        with contextlib.suppress(EOFError):  # EOF: the parent is gone
            while self._handle(self.conn.recv()):
                pass
        self.scheduler.close()
        owner.join(timeout=10)  # let the step in flight end before the interpreter does

    def _own_model(self) -> None:
        try:
            self.scheduler = make_scheduler(self.options, start=False, tuned=True)
        except Exception as error:
            self._send(("failed", _portable(error)))
            self.loaded.set()
            return
        self._send(("ready", describe(self.scheduler, "process")))
        self.loaded.set()
        self.scheduler.run()

    def _handle(self, message: tuple[Any, ...]) -> bool:
        assert self.scheduler is not None
        match message:
            case ("submit", key, ids, max_new_tokens):
                request = Request(ids=ids, max_new_tokens=max_new_tokens,
                                  emit=partial(self._token, key),
                                  finish=partial(self._finish, key), stop=threading.Event())
                self.requests[key] = request
                try:
                    self.scheduler.submit(request)
                except Exception as error:
                    request.finish(error)
            case ("cancel", key):
                cancelled = self.requests.get(key)
                if cancelled is not None and cancelled.stop is not None:
                    cancelled.stop.set()
            case ("clear", ack):
                self.scheduler.clear_prefix_cache()
                self._send(("ack", ack, None))
            case ("figures", ack):
                self._send(("ack", ack, self.scheduler.figures()))
            case ("close",):
                return False
        return True

    def _token(self, key: int, token: int) -> None:
        self._send(("token", key, token))

    def _finish(self, key: int, error: Exception | None) -> None:
        self.requests.pop(key, None)
        self._send(("finish", key, None if error is None else _portable(error)))

    def _send(self, message: tuple[Any, ...]) -> None:
        # OSError: the parent is gone; the main thread ends on its EOF
        with contextlib.suppress(OSError), self.send_lock:
            self.conn.send(message)


def _portable(error: BaseException) -> BaseException:
    """`error` if it survives pickling, else a RuntimeError that names it."""
    try:
        pickle.loads(pickle.dumps(error))
        return error
    except Exception:
        return RuntimeError(f"{type(error).__name__}: {error}")


def main(fd: int) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s rag-engine %(levelname)s "
                        "%(message)s", stream=sys.stderr)
    conn = Connection(fd)
    options: EngineOptions = conn.recv()
    _Child(conn, options).serve()


if __name__ == "__main__":
    main(int(sys.argv[1]))
