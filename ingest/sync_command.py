"""The `rag sync` command around `ingest.sync.FolderSync`: signals, messages, exit status and
the `--json` contract (the counts are the last stdout line whatever happens)."""

from __future__ import annotations

import json
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from rich.console import Console
from rich.markup import escape

from ingest.sync import FolderSync, SyncReport
from rag.documents.indexer import DocumentIndexer
from rag.errors import InvalidInput, RagError


@contextmanager
def stop_on_signals(stop: threading.Event, say: Callable[[str], None]) -> Iterator[None]:
    """While inside: Ctrl-C (SIGINT) or SIGTERM sets `stop`, so the sync ends after the file it
    is on; a second one raises KeyboardInterrupt at once. The old handlers come back after."""

    def handle(signum: int, frame: FrameType | None) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        say("stopping after the current file (Ctrl-C again to stop at once)")

    previous = {s: signal.signal(s, handle) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


@dataclass
class SyncOptions:
    """What `rag sync` was asked to do."""

    folder: Path
    collection: str | None = None  # None: the folder's name
    keep_watching: bool = False
    as_json: bool = False
    delete_many: bool = False


def sync_command(load: Callable[[], DocumentIndexer], options: SyncOptions,
                 console: Console) -> int:
    """`rag sync`: a line per file done and a summary per pass on `console`; with `as_json`
    each pass's counts as a JSON line on stdout, the last stdout line whatever happens (give a
    stderr console then). Returns the exit status: 0; 1 a file failed (without --watch); 2 bad
    input or an engine error; 130 stopped before a pass was done."""
    stop = threading.Event()
    shown: list[SyncReport] = []
    pending: list[SyncReport] = []
    collection = options.collection or ""

    def said(outcome: str, name: str, detail: str) -> None:
        colour = {"failed": "red", "removed": "yellow"}.get(outcome, "green")
        console.print(f"[{colour}]{outcome}[/] " + escape(name + (f": {detail}" if detail
                                                                   else "")), highlight=False,
                      soft_wrap=True)

    def begin() -> SyncReport:
        pending[:] = [SyncReport()]
        return pending[0]

    def show(done: SyncReport) -> None:
        if done.interrupted:
            console.print("interrupted: every document is at one complete version; sync "
                          "again to finish", markup=False)
        console.print(f"synced {options.folder} -> {collection}: {done.summary()}",
                      highlight=False, markup=False, soft_wrap=True)
        pending.clear()
        shown[:] = [done]
        if options.as_json:
            print(json.dumps(done.counts()), flush=True)  # plain: never wrapped

    try:
        with stop_on_signals(stop, lambda text: console.print(text, markup=False)):
            if not options.folder.is_dir():
                raise InvalidInput(f"{options.folder} is not a folder.",
                                   "Give the folder to mirror (it must exist).")
            collection = collection or _default_collection(options.folder)
            mirror = FolderSync(load(), options.folder, collection, options.delete_many, stop)
            show(mirror.run(said, begin()))
            if options.keep_watching and not stop.is_set():
                for done in mirror.watch(said, begin):
                    show(done)
    except RagError as exc:
        console.print(f"error: {exc.message}" + (f" {exc.hint}" if exc.hint else ""),
                      markup=False, highlight=False, soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        console.print("stopped at once: the file being synced is left for the next sync",
                      markup=False)
        return 130
    finally:  # after every other message: the last stdout line is the counts
        if pending:
            show(pending[0])
        elif options.as_json and not shown:  # stopped before any pass: nothing was done
            print(json.dumps(SyncReport().counts()), flush=True)
    if shown[-1].interrupted:
        return 130
    return 1 if shown[-1].failed and not options.keep_watching else 0


def _default_collection(folder: Path) -> str:
    """The folder's own name (`rag sync ~/notes` mirrors into `notes`)."""
    name = folder.absolute().resolve().name
    if not name:
        raise InvalidInput(f"{folder} has no name to use as the collection.",
                           "Pass --collection.")
    return name
